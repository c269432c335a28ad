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
final class ServerMetrics: Sendable {
    let connectionSeconds = CoreMetrics.Timer(label: "length_echo_connection_seconds")
    let handshakeSeconds = CoreMetrics.Timer(label: "length_echo_tls_handshake_seconds")
    private let open = Gauge(label: "length_echo_connections_open")
    private let published = Mutex((totals: ConnectionTotals(), acceptedByLoop: [Int]()))

    func certificate(notAfter: Int?) {
        // Made only for a server with a certificate: a plaintext server has no such metric, rather than 0.
        if let notAfter { Gauge(label: "length_echo_tls_certificate_expiry_timestamp_seconds").record(notAfter) }
    }

    /// Publishes `totals` (all connections so far, open ones included), the open count, and how many
    /// connections each event loop has taken (`length_echo_event_loop_connections_total{loop="0"}`: how evenly
    /// the kernel spreads them, which matters most with CPU affinity).
    func publish(_ totals: ConnectionTotals, open: Int, acceptedByLoop: [Int] = []) {
        self.open.record(open)
        self.published.withLock { published in
            for (loop, accepted) in acceptedByLoop.enumerated() {
                let before = loop < published.acceptedByLoop.count ? published.acceptedByLoop[loop] : 0
                Self.add("length_echo_event_loop_connections_total", [("loop", "\(loop)")], accepted - before)
            }
            published.acceptedByLoop = acceptedByLoop
            let last = published.totals
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
        case .clientClosed, .idle, .drained, .busy, .proxyRefused, .handshakeFailed, .notTLS, .denied,
            .perAddressLimit, .handshakeRate:
            nil
        }
    }
}
