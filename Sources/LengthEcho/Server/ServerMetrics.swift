import CoreMetrics
import LengthEchoTLS
import NIOCore
import Synchronization

/// What the connections of one event loop (or of the whole server) amount to: plain integers, added to on
/// the loop that owns them, folded across loops only when someone asks (a scrape). Nothing per message
/// touches shared memory.
struct ConnectionTotals: Sendable {
    struct Handshake: Hashable, Sendable {
        var version: String
        var resumed: Bool
    }

    var accepted = 0
    var messages = 0
    var bytesIn = 0
    var bytesOut = 0
    /// Why connections ended.
    var ends: [ConnectionEnd: Int] = [:]
    /// Handshakes that succeeded.
    var handshakes: [Handshake: Int] = [:]

    /// Adds one connection: one that ended, or (for a snapshot) one still open.
    mutating func add(_ record: ConnectionRecord) {
        self.accepted += 1
        self.messages += record.messages
        self.bytesIn += record.bytesIn
        self.bytesOut += record.bytesOut
        if let end = record.end { self.ends[end, default: 0] += 1 }
        if let tls = record.tls {
            self.handshakes[Handshake(version: tls.version, resumed: tls.resumed), default: 0] += 1
        }
    }

    /// Each count the larger of the two: what was published and a new sum, of which neither need be the later
    /// (concurrent scrapes sum the loops at interleaved moments; a connection between its close and its line is
    /// in neither), though each is at most the truth. Counters then never go back, and never count twice.
    mutating func raise(to other: ConnectionTotals) {
        self.accepted = max(self.accepted, other.accepted)
        self.messages = max(self.messages, other.messages)
        self.bytesIn = max(self.bytesIn, other.bytesIn)
        self.bytesOut = max(self.bytesOut, other.bytesOut)
        self.ends.merge(other.ends, uniquingKeysWith: max)
        self.handshakes.merge(other.handshakes, uniquingKeysWith: max)
    }

    mutating func add(_ other: ConnectionTotals) {
        self.accepted += other.accepted
        self.messages += other.messages
        self.bytesIn += other.bytesIn
        self.bytesOut += other.bytesOut
        for (end, count) in other.ends { self.ends[end, default: 0] += count }
        for (handshake, count) in other.handshakes { self.handshakes[handshake, default: 0] += count }
    }
}

/// The server's metrics, emitted through swift-metrics: the program chooses the backend (the `server`
/// executable bootstraps swift-prometheus; without a bootstrap they cost nothing).
///
/// Counters are published from folded totals (`publish`), as increments by what changed since the last
/// publish, so a scrape that publishes first sees every message answered before it. Histograms are recorded
/// once per connection (its duration) and once per handshake, never per message.
///
/// Names follow Prometheus conventions: `length_echo_` prefix, `_total` counters, base units (seconds, bytes).
package final class ServerMetrics: Sendable {
    let connectionSeconds = CoreMetrics.Timer(label: "length_echo_connection_seconds")
    let handshakeSeconds = CoreMetrics.Timer(label: "length_echo_tls_handshake_seconds")
    private let open = Gauge(label: "length_echo_connections_open")
    private let published = Mutex((totals: ConnectionTotals(), acceptedByLoop: [Int]()))

    /// Makes every series the server knows of, at 0, so each is there from the first scrape rather than from its
    /// first event (a rate over a series that appears late misses its start).
    init(loops: Int, tls: Bool) {
        var series: [(String, [(String, String)])] = [
            ("length_echo_connections_total", []), ("length_echo_messages_total", []),
            ("length_echo_bytes_total", [("direction", "in")]), ("length_echo_bytes_total", [("direction", "out")]),
        ]
        for end in ConnectionEnd.allCases {
            if let reason = Self.refusal(end) {
                series.append(("length_echo_connections_refused_total", [("reason", reason)]))
            }
            if let kind = Self.error(end) { series.append(("length_echo_errors_total", [("kind", kind)])) }
        }
        if tls {
            series.append(
                ("length_echo_tls_handshakes_total", [("result", "failed"), ("version", "none"), ("resumed", "false")]))
            for version in ["TLSv1.2", "TLSv1.3"] {
                for resumed in [false, true] {
                    series.append(
                        (
                            "length_echo_tls_handshakes_total",
                            [("result", "ok"), ("version", version), ("resumed", "\(resumed)")]
                        ))
                }
            }
        }
        for loop in 0..<loops { series.append(("length_echo_event_loop_connections_total", [("loop", "\(loop)")])) }
        var seen = Set<String>()
        for (label, dimensions) in series where seen.insert("\(label)\(dimensions)").inserted {
            Counter(label: label, dimensions: dimensions).increment(by: 0)
        }
        self.open.record(0)
    }

    /// What each metric family is, for its `# HELP` line.
    package static let help: [String: String] = [
        "length_echo_connections_open": "Client connections open now.",
        "length_echo_connections_total": "Client connections accepted, refused ones included.",
        "length_echo_connections_refused_total": "Connections refused before they were served, by reason.",
        "length_echo_messages_total": "Messages answered.",
        "length_echo_bytes_total": "Bytes received from clients (in) and sent to them (out), before TLS.",
        "length_echo_errors_total": "Connections that ended in an error, by kind.",
        "length_echo_tls_handshakes_total": "TLS handshakes, by result, version and whether the session was resumed.",
        "length_echo_tls_handshake_seconds": "From accept to a finished TLS handshake, in seconds.",
        "length_echo_connection_seconds": "How long connections lasted, in seconds.",
        "length_echo_tls_certificate_expiry_timestamp_seconds": "When the server certificate expires, in Unix time.",
        "length_echo_event_loop_connections_total": "Connections each event loop has taken.",
    ]

    /// Prometheus text with a `# HELP` line before each `# TYPE` line whose family `help` (or `more`) describes.
    package static func described(_ exposition: [UInt8], more: [String: String] = [:]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(exposition.count + 2048)
        for line in exposition.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false) {
            if line.starts(with: Array("# TYPE ".utf8)) {
                let family = String(decoding: line.dropFirst(7).prefix { $0 != UInt8(ascii: " ") }, as: UTF8.self)
                if let text = Self.help[family] ?? more[family] { out += Array("# HELP \(family) \(text)\n".utf8) }
            }
            out += line
            out.append(UInt8(ascii: "\n"))
        }
        if exposition.last == UInt8(ascii: "\n") || exposition.isEmpty { out.removeLast() }
        return out
    }

    func certificate(notAfter: Int?) {
        // Made only for a server with a certificate: a plaintext server has no such metric, rather than 0.
        if let notAfter { Gauge(label: "length_echo_tls_certificate_expiry_timestamp_seconds").record(notAfter) }
    }

    /// Publishes `sum` (all connections so far, open ones included), the open count, and how many
    /// connections each event loop has taken (`length_echo_event_loop_connections_total{loop="0"}`: how evenly
    /// the kernel spreads them, which matters most with CPU affinity).
    func publish(_ sum: ConnectionTotals, open: Int, acceptedByLoop: [Int] = []) {
        self.open.record(open)
        self.published.withLock { published in
            for (loop, accepted) in acceptedByLoop.enumerated() {
                let before = loop < published.acceptedByLoop.count ? published.acceptedByLoop[loop] : 0
                Self.add("length_echo_event_loop_connections_total", [("loop", "\(loop)")], accepted - before)
                if loop < published.acceptedByLoop.count {
                    published.acceptedByLoop[loop] = max(before, accepted)
                } else {
                    published.acceptedByLoop.append(accepted)
                }
            }
            let last = published.totals
            var totals = last
            totals.raise(to: sum)
            Self.add("length_echo_connections_total", [], totals.accepted - last.accepted)
            Self.add("length_echo_messages_total", [], totals.messages - last.messages)
            Self.add("length_echo_bytes_total", [("direction", "in")], totals.bytesIn - last.bytesIn)
            Self.add("length_echo_bytes_total", [("direction", "out")], totals.bytesOut - last.bytesOut)
            for (end, count) in totals.ends {
                let delta = count - (last.ends[end] ?? 0)
                if let reason = Self.refusal(end) {
                    Self.add("length_echo_connections_refused_total", [("reason", reason)], delta)
                }
                if let kind = Self.error(end) {
                    Self.add("length_echo_errors_total", [("kind", kind)], delta)
                }
                if [.handshakeFailed, .handshakeTimeout, .notTLS].contains(end) {
                    Self.add(
                        "length_echo_tls_handshakes_total",
                        [("result", "failed"), ("version", "none"), ("resumed", "false")], delta)
                }
            }
            for (handshake, count) in totals.handshakes {
                Self.add(
                    "length_echo_tls_handshakes_total",
                    [("result", "ok"), ("version", handshake.version), ("resumed", "\(handshake.resumed)")],
                    count - (last.handshakes[handshake] ?? 0))
            }
            published.totals = totals
        }
    }

    private static func add(_ label: String, _ dimensions: [(String, String)], _ delta: Int) {
        guard delta > 0 else { return }
        Counter(label: label, dimensions: dimensions).increment(by: delta)
    }

    /// Connections refused before they were served, by why.
    static func refusal(_ end: ConnectionEnd) -> String? {
        switch end {
        case .busy: "busy"
        case .proxyRefused: "proxy"
        case .denied: "denied"
        case .perAddressLimit: "per_address"
        case .handshakeRate: "handshake_rate"
        case .handshakeFailed, .handshakeTimeout, .notTLS: "tls"
        case .notPlaintext: "not_plaintext"
        default: nil
        }
    }

    /// Connections that ended in an error, by kind.
    static func error(_ end: ConnectionEnd) -> String? {
        switch end {
        case .tooLarge: "too_large"
        case .messageTimeout: "message_timeout"
        case .idleMidMessage: "idle_mid_message"
        case .notReading: "not_reading"
        case .handshakeTimeout: "handshake_timeout"
        case .reset: "reset"
        case .drainTimeout: "drain_timeout"
        case .error: "other"
        case .clientClosed, .idle, .drained, .busy, .proxyRefused, .handshakeFailed, .notTLS, .notPlaintext, .denied,
            .perAddressLimit, .handshakeRate:
            nil
        }
    }
}
