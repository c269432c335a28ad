import LengthEcho
import LengthEchoCore
import Logging
import NIOCore
import Synchronization

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
    var metadata: Logger.Metadata = [:]
    /// This handler's own level, when one was set; else the process's (`level`, which a reload changes).
    private var ownLevel: Logger.Level? = nil

    init(label: String, format: LogFormat) {
        self.label = label
        self.format = format
    }

    /// The process's log level: every handler without a level of its own, and the connection lines, follow it.
    static let level = Atomic<Int>(Logger.Level.info.rank)

    var logLevel: Logger.Level {
        get { self.ownLevel ?? Logger.Level(rank: Self.level.load(ordering: .relaxed)) }
        set { self.ownLevel = newValue }
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { self.metadata[key] }
        set { self.metadata[key] = newValue }
    }

    /// The keys a reader looks for first, in this order; any others follow, sorted.
    static let keyOrder = ConnectionSummary.fieldNames
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
        let format = self.format
        let line = LineBuilder(format: format)
        Self.writer.line { out in
            line.start(&out, level: event.level, message: "\(event.message)")
            for (key, value) in fields { line.field(key, value, &out) }
            line.finish(&out)
        }
    }
}

/// Writes one diagnostic line into a buffer, field by field, as text (`TIME LEVEL MESSAGE key=value ...`) or
/// as a JSON object; strings that come from peers are escaped so they can neither break the line nor forge a
/// field.
struct LineBuilder {
    let format: LogFormat

    /// The time, the level and the message.
    func start(_ out: inout [UInt8], level: Logger.Level, message: String) {
        switch self.format {
        case .text:
            LogTime.append(to: &out)
            out.append(UInt8(ascii: " "))
            out.append(contentsOf: level.rawValue.utf8)
            out.append(UInt8(ascii: " "))
            Escaping.appendPrintable(Array(message.utf8), to: &out)
        case .json:
            out.append(contentsOf: #"{"time":""#.utf8)
            LogTime.append(to: &out)
            out.append(contentsOf: #"","level":""#.utf8)
            out.append(contentsOf: level.rawValue.utf8)
            out.append(contentsOf: #"","message":"#.utf8)
            JSON.appendString(message, to: &out)
        }
    }

    private func key(_ key: String, _ out: inout [UInt8]) {
        switch self.format {
        case .text:
            out.append(UInt8(ascii: " "))
            out.append(contentsOf: key.utf8)
            out.append(UInt8(ascii: "="))
        case .json:
            out.append(UInt8(ascii: ","))
            JSON.appendString(key, to: &out)
            out.append(UInt8(ascii: ":"))
        }
    }

    /// A string (a peer's, possibly): quoted in JSON; in text, quoted when it holds a space, `"` or `=`.
    func field(_ key: String, string: String, _ out: inout [UInt8]) {
        self.key(key, &out)
        switch self.format {
        case .json:
            JSON.appendString(string, to: &out)
        case .text:
            let bytes = Array(string.utf8)
            guard bytes.isEmpty || bytes.contains(where: { $0 == 0x20 || $0 == 0x22 || $0 == 0x3D }) else {
                Escaping.appendPrintable(bytes, to: &out)
                return
            }
            var escaped: [UInt8] = []
            Escaping.appendPrintable(bytes, to: &escaped)
            out.append(UInt8(ascii: "\""))
            for byte in escaped {
                if byte == 0x22 { out.append(UInt8(ascii: "\\")) }
                out.append(byte)
            }
            out.append(UInt8(ascii: "\""))
        }
    }

    /// A number or a boolean, as it is (the caller's own text, never a peer's).
    func field(_ key: String, literal: some Sequence<UInt8>, _ out: inout [UInt8]) {
        self.key(key, &out)
        out.append(contentsOf: literal)
    }

    func field(_ key: String, int: Int, _ out: inout [UInt8]) {
        self.key(key, &out)
        Digits.append(int, to: &out)
    }

    /// `ADDRESS:PORT` (`[ADDRESS]:PORT` for IPv6); IPv4 written without building a `String`.
    func field(_ key: String, address: SocketAddress?, _ out: inout [UInt8]) {
        guard case .v4(let v4)? = address else {
            self.field(key, string: ConnectionPeer.format(address), &out)
            return
        }
        self.key(key, &out)
        if self.format == .json { out.append(UInt8(ascii: "\"")) }
        withUnsafeBytes(of: v4.address.sin_addr) { bytes in
            for (index, byte) in bytes.enumerated() {
                if index > 0 { out.append(UInt8(ascii: ".")) }
                Digits.append(Int(byte), to: &out)
            }
        }
        out.append(UInt8(ascii: ":"))
        Digits.append(Int(UInt16(bigEndian: v4.address.sin_port)), to: &out)
        if self.format == .json { out.append(UInt8(ascii: "\"")) }
    }

    /// A swift-log metadata value: numbers and booleans as they are, the rest as strings.
    func field(_ key: String, _ value: Logger.Metadata.Value, _ out: inout [UInt8]) {
        switch (self.format, value) {
        case (_, .string(let string)):
            self.field(key, string: string, &out)
        case (_, .stringConvertible(let convertible)):
            let text = convertible.description
            if JSON.isLiteral(text) {
                self.field(key, literal: text.utf8, &out)
            } else {
                self.field(key, string: text, &out)
            }
        case (.json, _):
            self.key(key, &out)
            JSON.append(value, to: &out)
        case (.text, _):
            self.field(key, string: value.description, &out)
        }
    }

    func finish(_ out: inout [UInt8]) {
        if self.format == .json { out.append(UInt8(ascii: "}")) }
    }
}

/// The `server` executable's connection lines: written straight into the log buffer from the values, with
/// none of swift-log's per-line metadata dictionary.
struct ConnectionLines: Sendable {
    let format: LogFormat

    func write(_ summary: ConnectionSummary) {
        let level: Logger.Level = summary.isHealthCheck ? .debug : .info
        guard Logger.Level(rank: QueuedLogHandler.level.load(ordering: .relaxed)) <= level else { return }
        let format = self.format
        let line = LineBuilder(format: format)
        QueuedLogHandler.writer.line { out in
            line.start(&out, level: level, message: "connection ended")
            summary.forEachField { name, value in Self.append(name, value, line: line, to: &out) }
            line.finish(&out)
        }
    }
}

extension ConnectionLines {
    /// One field of a connection line. (A function of its own: a switch inside the closures above made the
    /// type checker take minutes.)
    static func append(_ name: String, _ value: ConnectionSummary.Field, line: LineBuilder, to out: inout [UInt8]) {
        switch value {
        case .address(let address):
            line.field(name, address: address, &out)
        case .text(let text):
            line.field(name, string: text, &out)
        case .flag(let flag):
            line.field(name, literal: (flag ? "true" : "false").utf8, &out)
        case .count(let count):
            line.field(name, int: count, &out)
        case .seconds(let amount):
            let milliseconds = max(amount.nanoseconds, 0) / 1_000_000
            var seconds: [UInt8] = []
            Digits.append(Int(milliseconds / 1000), to: &seconds)
            seconds.append(UInt8(ascii: "."))
            Digits.append(Int(milliseconds % 1000), width: 3, to: &seconds)
            line.field(name, literal: seconds, &out)
        }
    }
}

/// Decimal digits into a byte buffer.
enum Digits {
    static func append(_ value: Int, width: Int = 1, to out: inout [UInt8]) {
        var digits:
            (
                UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8,
                UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8
            ) =
                (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        var magnitude = value.magnitude
        var count = 0
        withUnsafeMutableBytes(of: &digits) { buffer in
            repeat {
                buffer[19 - count] = UInt8(ascii: "0") + UInt8(magnitude % 10)
                magnitude /= 10
                count += 1
            } while magnitude > 0 || count < width
            if value < 0 { out.append(UInt8(ascii: "-")) }
            out.append(contentsOf: buffer[(20 - count)...])
        }
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

extension Logger.Level {
    /// The level as a number, for an atomic: trace is 0, critical 6.
    var rank: Int { Self.allCases.firstIndex(of: self) ?? 2 }

    init(rank: Int) {
        self = Self.allCases.indices.contains(rank) ? Self.allCases[rank] : .info
    }
}
