import LengthEchoCore
import Logging

#if canImport(Glibc)
import Glibc
#endif

/// How diagnostic lines look on stderr.
enum LogFormat: String, CaseIterable, Sendable {
    /// `TIME LEVEL MESSAGE key=value ...`, for people.
    case text
    /// One JSON object per line: `time`, `level`, `message` and the metadata as top-level keys, for a log
    /// pipeline.
    case json
}

/// swift-log's lines on stderr through a `LineWriter`: logging never blocks an event loop. A line is formatted
/// on the caller's thread into bytes (no `String` building per field) and handed to the writer thread.
struct QueuedLogHandler: LogHandler {
    static let writer = LineWriter(fd: 2, droppedNote: "server: (N log lines not shown: stderr is not keeping up)")

    let label: String
    let format: LogFormat
    var logLevel: Logger.Level = .info
    var metadata: Logger.Metadata = [:]

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { self.metadata[key] }
        set { self.metadata[key] = newValue }
    }

    /// The keys a reader looks for first, in this order; any others follow, sorted.
    static let keyOrder = [
        "peer", "via", "tls_version", "cipher", "resumed", "client_subject", "messages", "bytes_in", "bytes_out",
        "duration_s", "end", "detail",
    ]
    private static let rank = Dictionary(uniqueKeysWithValues: keyOrder.enumerated().map { ($1, $0) })

    // swift-log's `log` requirement, in the form of its current version.
    func log(event: LogEvent) {
        var all = self.metadata
        if let extra = event.metadata {
            if all.isEmpty { all = extra } else { all.merge(extra) { $1 } }
        }
        let fields = all.sorted { a, b in
            let (ra, rb) = (Self.rank[a.key] ?? Int.max, Self.rank[b.key] ?? Int.max)
            return ra != rb ? ra < rb : a.key < b.key
        }
        var line: [UInt8] = []
        line.reserveCapacity(256)
        switch self.format {
        case .text: Self.text(event, fields: fields, into: &line)
        case .json: Self.json(event, fields: fields, into: &line)
        }
        Self.writer.line { $0.append(contentsOf: line) }
    }

    private static func text(
        _ event: LogEvent, fields: [(key: String, value: Logger.Metadata.Value)], into line: inout [UInt8]
    ) {
        LogTime.append(to: &line)
        line.append(UInt8(ascii: " "))
        line.append(contentsOf: event.level.rawValue.utf8)
        line.append(UInt8(ascii: " "))
        Escaping.appendPrintable(Array("\(event.message)".utf8), to: &line)
        for (key, value) in fields {
            line.append(UInt8(ascii: " "))
            line.append(contentsOf: key.utf8)
            line.append(UInt8(ascii: "="))
            let bytes = Array(value.description.utf8)
            // Quoted when it could be mistaken for more than one field (a certificate subject, say).
            if bytes.isEmpty || bytes.contains(where: { $0 == 0x20 || $0 == 0x22 || $0 == 0x3D }) {
                line.append(UInt8(ascii: "\""))
                var escaped: [UInt8] = []
                Escaping.appendPrintable(bytes, to: &escaped)
                for byte in escaped {
                    if byte == 0x22 { line.append(UInt8(ascii: "\\")) }
                    line.append(byte)
                }
                line.append(UInt8(ascii: "\""))
            } else {
                Escaping.appendPrintable(bytes, to: &line)
            }
        }
    }

    private static func json(
        _ event: LogEvent, fields: [(key: String, value: Logger.Metadata.Value)], into line: inout [UInt8]
    ) {
        line.append(contentsOf: #"{"time":""#.utf8)
        LogTime.append(to: &line)
        line.append(contentsOf: #"","level":""#.utf8)
        line.append(contentsOf: event.level.rawValue.utf8)
        line.append(contentsOf: #"","message":"#.utf8)
        JSON.appendString("\(event.message)", to: &line)
        for (key, value) in fields {
            line.append(UInt8(ascii: ","))
            JSON.appendString(key, to: &line)
            line.append(UInt8(ascii: ":"))
            JSON.append(value, to: &line)
        }
        line.append(UInt8(ascii: "}"))
    }
}

/// The JSON a log line needs: strings (everything outside printable ASCII escaped, so a peer's bytes can
/// neither break the line nor reach a terminal raw), numbers and booleans as they are.
enum JSON {
    static func append(_ value: Logger.Metadata.Value, to out: inout [UInt8]) {
        switch value {
        case .string(let string):
            appendString(string, to: &out)
        case .stringConvertible(let convertible):
            let text = convertible.description
            if isLiteral(text) { out.append(contentsOf: text.utf8) } else { appendString(text, to: &out) }
        case .array(let values):
            out.append(UInt8(ascii: "["))
            for (index, value) in values.enumerated() {
                if index > 0 { out.append(UInt8(ascii: ",")) }
                append(value, to: &out)
            }
            out.append(UInt8(ascii: "]"))
        case .dictionary(let dictionary):
            out.append(UInt8(ascii: "{"))
            for (index, (key, value)) in dictionary.sorted(by: { $0.key < $1.key }).enumerated() {
                if index > 0 { out.append(UInt8(ascii: ",")) }
                appendString(key, to: &out)
                out.append(UInt8(ascii: ":"))
                append(value, to: &out)
            }
            out.append(UInt8(ascii: "}"))
        }
    }

    /// `true`, `false`, or a number as JSON writes one (`12`, `-3`, `0.004`).
    static func isLiteral(_ text: String) -> Bool {
        if text == "true" || text == "false" { return true }
        var bytes = Substring(text).utf8[...]
        if bytes.first == UInt8(ascii: "-") { bytes = bytes.dropFirst() }
        let integer = bytes.prefix { (0x30...0x39).contains($0) }
        guard !integer.isEmpty, integer.count == 1 || integer.first != 0x30 else { return false }
        let rest = bytes.dropFirst(integer.count)
        if rest.isEmpty { return true }
        guard rest.first == UInt8(ascii: "."), rest.count > 1 else { return false }
        return rest.dropFirst().allSatisfy { (0x30...0x39).contains($0) }
    }

    static func appendString(_ string: String, to out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        for scalar in string.unicodeScalars {
            switch scalar.value {
            case 0x22: out.append(contentsOf: #"\""#.utf8)
            case 0x5C: out.append(contentsOf: #"\\"#.utf8)
            case 0x0A: out.append(contentsOf: #"\n"#.utf8)
            case 0x09: out.append(contentsOf: #"\t"#.utf8)
            case 0x20..<0x7F: out.append(UInt8(scalar.value))
            case 0..<0x10000: appendEscape(UInt16(scalar.value), to: &out)
            default:
                let value = scalar.value - 0x10000
                appendEscape(UInt16(0xD800 + (value >> 10)), to: &out)
                appendEscape(UInt16(0xDC00 + (value & 0x3FF)), to: &out)
            }
        }
        out.append(UInt8(ascii: "\""))
    }

    private static let hex = Array("0123456789abcdef".utf8)

    private static func appendEscape(_ unit: UInt16, to out: inout [UInt8]) {
        out.append(contentsOf: #"\u"#.utf8)
        for shift in stride(from: 12, through: 0, by: -4) { out.append(hex[Int((unit >> UInt16(shift)) & 0xF)]) }
    }
}

/// `2026-11-25T20:13:00.123Z`, from the real-time clock, written without `strftime` or a `String`.
enum LogTime {
    static func append(to out: inout [UInt8]) {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        var seconds = now.tv_sec
        var parts = tm()
        gmtime_r(&seconds, &parts)
        digits(Int(parts.tm_year) + 1900, 4, &out)
        out.append(UInt8(ascii: "-"))
        digits(Int(parts.tm_mon) + 1, 2, &out)
        out.append(UInt8(ascii: "-"))
        digits(Int(parts.tm_mday), 2, &out)
        out.append(UInt8(ascii: "T"))
        digits(Int(parts.tm_hour), 2, &out)
        out.append(UInt8(ascii: ":"))
        digits(Int(parts.tm_min), 2, &out)
        out.append(UInt8(ascii: ":"))
        digits(Int(parts.tm_sec), 2, &out)
        out.append(UInt8(ascii: "."))
        digits(Int(now.tv_nsec) / 1_000_000, 3, &out)
        out.append(UInt8(ascii: "Z"))
    }

    private static func digits(_ value: Int, _ count: Int, _ out: inout [UInt8]) {
        var divisor = 1
        for _ in 1..<count { divisor *= 10 }
        var value = value
        while divisor > 0 {
            out.append(UInt8(ascii: "0") + UInt8((value / divisor) % 10))
            value %= divisor
            divisor /= 10
        }
    }
}
