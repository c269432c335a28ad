import LengthEchoCore
import LengthEchoTLS
import Logging
import NIOCore

extension ConnectionSummary {
    /// Why a connection ended, as its connection line says it (`end=`).
    public enum End: String, Sendable, CaseIterable {
        /// The client closed (or half-closed) its side; everything it sent was answered.
        case clientClosed = "client-closed"
        /// Nothing arrived for the idle timeout between messages.
        case idle
        /// Nothing arrived for the idle timeout in the middle of a message.
        case idleMidMessage = "idle-mid-message"
        /// A message was not finished within the message timeout.
        case messageTimeout = "message-timeout"
        /// A message was longer than the largest accepted.
        case tooLarge = "too-large"
        /// The peer stopped taking its replies.
        case notReading = "not-reading"
        /// The server drained it on shutdown.
        case drained
        /// Still open when the drain timeout ran out.
        case drainTimeout = "drain-timeout"
        /// Refused: the server was at its connection cap.
        case busy
        /// Refused: the address is denied, or in no allowed range.
        case denied
        /// Refused: the address has its maximum of connections open.
        case perAddressLimit = "per-address-limit"
        /// Refused before any TLS work: the address is over its rate of handshakes.
        case handshakeRate = "handshake-rate"
        /// Refused: no valid PROXY header, from an address not trusted to send one, or not in time.
        case proxyRefused = "proxy-refused"
        /// The TLS handshake failed (the detail says why).
        case handshakeFailed = "handshake-failed"
        /// The TLS handshake did not finish in time.
        case handshakeTimeout = "handshake-timeout"
        /// A plaintext client on the TLS port.
        case notTLS = "not-tls"
        /// A TLS client on the plaintext port.
        case notPlaintext = "not-plaintext"
        /// The peer reset the connection, or closed a TLS connection without close_notify.
        case reset
        /// Anything else (the detail says what).
        case error
    }
}

/// Spelled as before inside the package.
package typealias ConnectionEnd = ConnectionSummary.End

/// What the server knows about one connection, from accept to close, for the line logged when it ends.
///
/// Shared by the connection's stages and used on its event loop only. The stage that ends the connection
/// says why with `end(_:detail:)` (the first reason given wins); the protocol stage counts as it goes.
package final class ConnectionRecord {
    package var peer: ConnectionPeer
    package let started: NIODeadline
    // Counted per read and per message on the connection's loop only, never while another access is open: the
    // run-time exclusivity checks, a call each, are left out.
    @exclusivity(unchecked) package var messages = 0
    @exclusivity(unchecked) package var bytesIn = 0
    @exclusivity(unchecked) package var bytesOut = 0
    package var tls: TLSConnectionInfo?
    /// From accept to the end of the TLS handshake, once it has finished.
    private(set) var handshakeDuration: TimeAmount?
    /// What the connection counts against, from its admission to its close.
    var ticket: AdmissionTicket?
    package private(set) var end: ConnectionEnd?
    /// More about the end, when there is more to say (a TLS failure, a PROXY refusal).
    package private(set) var detail: String?

    package init(peer: ConnectionPeer, started: NIODeadline = .now()) {
        self.peer = peer
        self.started = started
    }

    /// The TLS handshake finished at `now`, agreeing on `info`.
    func handshakeCompleted(_ info: TLSConnectionInfo, at now: NIODeadline) {
        self.tls = info
        self.handshakeDuration = now - self.started
    }

    package func end(_ reason: ConnectionEnd, detail: String? = nil) {
        guard self.end == nil else { return }
        self.end = reason
        self.detail = detail
    }

    /// The connection line's metadata (the keys are the JSON keys).
    package func metadata(now: NIODeadline = .now()) -> Logger.Metadata {
        var metadata: Logger.Metadata = [:]
        self.summary(now: now).forEachField { name, value in metadata[name] = value.metadataValue }
        return metadata
    }

    /// Whether this is a balancer's own connection (a PROXY v2 `LOCAL` health check), logged at `debug`.
    package var isHealthCheck = false

    /// What the connection line says, as values.
    package func summary(now: NIODeadline = .now()) -> ConnectionSummary {
        ConnectionSummary(
            peer: self.peer.address,
            via: self.peer.via,
            tls: self.tls,
            messages: self.messages,
            bytesIn: self.bytesIn,
            bytesOut: self.bytesOut,
            duration: now - self.started,
            end: self.end ?? .error,
            detail: self.detail,
            isHealthCheck: self.isHealthCheck
        )
    }

    /// The connection line: to `sink` when the server was given one, else to `logger` at `info` (`debug` for
    /// a balancer's health check).
    func log(to logger: Logger, sink: (@Sendable (ConnectionSummary) -> Void)?, now: NIODeadline) {
        if let sink {
            sink(self.summary(now: now))
            return
        }
        let level: Logger.Level = self.isHealthCheck ? .debug : .info
        guard logger.logLevel <= level else { return }
        logger.log(level: level, "connection ended", metadata: self.metadata(now: now))
    }
}

/// One connection's line, as values: for a program that writes its own log lines (the `server` executable
/// writes them straight into its log buffer, cheaper than building swift-log metadata per connection).
public struct ConnectionSummary: Sendable {
    /// The client (behind a balancer, the one its PROXY header named).
    public var peer: SocketAddress?
    /// The balancer the connection came through, if any.
    public var via: SocketAddress?
    /// What the TLS handshake agreed on, when there was one.
    public var tls: TLSConnectionInfo?
    /// Messages answered.
    public var messages: Int
    /// Protocol bytes received (before TLS).
    public var bytesIn: Int
    /// Protocol bytes sent (before TLS).
    public var bytesOut: Int
    /// From accept to close.
    public var duration: TimeAmount
    /// Why the connection ended.
    public var end: End
    /// More about the end, when there is more to say.
    public var detail: String?
    /// Whether it was a balancer's own health check (a PROXY v2 `LOCAL` connection).
    public var isHealthCheck: Bool

    /// One field of the line, as a value.
    public enum Field {
        case address(SocketAddress?)
        case text(String)
        case flag(Bool)
        case count(Int)
        /// A duration, written as seconds with millisecond precision (`0.004`).
        case seconds(TimeAmount)

        /// The field as swift-log metadata.
        public var metadataValue: Logger.Metadata.Value {
            switch self {
            case .address(let address): .string(ConnectionPeer.format(address))
            case .text(let text): .string(text)
            case .flag(let flag): .stringConvertible(flag)
            case .count(let count): .stringConvertible(count)
            case .seconds(let amount): .stringConvertible(Seconds(nanoseconds: amount.nanoseconds))
            }
        }
    }

    /// Every field name the line can have, in the order `forEachField` gives them (the JSON keys).
    public static let fieldNames = [
        "peer", "via", "tls_version", "cipher", "resumed", "alpn", "client_subject", "messages", "bytes_in",
        "bytes_out", "duration_s", "end", "detail",
    ]

    /// Calls `visit` with each field the line has, in the order a reader wants them: the one list of the
    /// connection line's fields, for every way of writing it.
    public func forEachField(_ visit: (_ name: String, _ value: Field) -> Void) {
        visit("peer", .address(self.peer))
        if let via = self.via { visit("via", .address(via)) }
        if let tls = self.tls {
            visit("tls_version", .text(tls.version))
            visit("cipher", .text(tls.cipher))
            visit("resumed", .flag(tls.resumed))
            if let alpn = tls.alpn { visit("alpn", .text(alpn)) }
            if let subject = tls.peerSubject { visit("client_subject", .text(subject)) }
        }
        visit("messages", .count(self.messages))
        visit("bytes_in", .count(self.bytesIn))
        visit("bytes_out", .count(self.bytesOut))
        visit("duration_s", .seconds(self.duration))
        visit("end", .text(self.end.rawValue))
        if let detail = self.detail { visit("detail", .text(detail)) }
    }
}

/// A duration printed as seconds with millisecond precision (`0.004`), a number in JSON.
struct Seconds: CustomStringConvertible, Sendable {
    let nanoseconds: Int64

    var description: String {
        let milliseconds = max(self.nanoseconds, 0) / 1_000_000
        let fraction = String(milliseconds % 1000)
        return "\(milliseconds / 1000).\(String(repeating: "0", count: 3 - fraction.count))\(fraction)"
    }
}
