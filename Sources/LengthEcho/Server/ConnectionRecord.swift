import LengthEchoCore
import LengthEchoTLS
import Logging
import NIOCore

/// Why a connection ended, as its connection line says it (`end=`).
public enum ConnectionEnd: String, Sendable {
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
    /// The peer reset the connection, or closed a TLS connection without close_notify.
    case reset
    /// Anything else (the detail says what).
    case error
}

/// What the server knows about one connection, from accept to close, for the line logged when it ends.
///
/// Shared by the connection's stages and used on its event loop only. The stage that ends the connection
/// says why with `end(_:detail:)` (the first reason given wins); the protocol stage counts as it goes.
public final class ConnectionRecord {
    public let peer: ConnectionPeer
    public let started: NIODeadline
    public var messages = 0
    public var bytesIn = 0
    public var bytesOut = 0
    public var tls: TLSConnectionInfo?
    public private(set) var end: ConnectionEnd?
    /// More about the end, when there is more to say (a TLS failure, a PROXY refusal).
    public private(set) var detail: String?

    public init(peer: ConnectionPeer, started: NIODeadline = .now()) {
        self.peer = peer
        self.started = started
    }

    public func end(_ reason: ConnectionEnd, detail: String? = nil) {
        guard self.end == nil else { return }
        self.end = reason
        self.detail = detail
    }

    /// The connection line's metadata, in the order a reader wants it (the keys are the JSON keys).
    public func metadata(now: NIODeadline = .now()) -> Logger.Metadata {
        var metadata: Logger.Metadata = ["peer": .string(self.peer.description)]
        if let via = self.peer.via { metadata["via"] = .string(ConnectionPeer.format(via)) }
        if let tls = self.tls {
            metadata["tls_version"] = .string(tls.version)
            metadata["cipher"] = .string(tls.cipher)
            metadata["resumed"] = .stringConvertible(tls.resumed)
            if let alpn = tls.alpn { metadata["alpn"] = .string(alpn) }
            if let subject = tls.peerSubject { metadata["client_subject"] = .string(subject) }
        }
        metadata["messages"] = .stringConvertible(self.messages)
        metadata["bytes_in"] = .stringConvertible(self.bytesIn)
        metadata["bytes_out"] = .stringConvertible(self.bytesOut)
        metadata["duration_s"] = .stringConvertible(Seconds(nanoseconds: (now - self.started).nanoseconds))
        metadata["end"] = .string((self.end ?? .error).rawValue)
        if let detail = self.detail { metadata["detail"] = .string(detail) }
        return metadata
    }

    /// Whether this is a balancer's own connection (a PROXY v2 `LOCAL` health check), logged at `debug`.
    public var isHealthCheck = false

    /// What the connection line says, as values.
    public func summary(now: NIODeadline = .now()) -> ConnectionSummary {
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
    func log(to logger: Logger, sink: (@Sendable (ConnectionSummary) -> Void)?) {
        if let sink {
            sink(self.summary())
            return
        }
        let level: Logger.Level = self.isHealthCheck ? .debug : .info
        guard logger.logLevel <= level else { return }
        logger.log(level: level, "connection ended", metadata: self.metadata())
    }
}

/// One connection's line, as values: for a program that writes its own log lines (the `server` executable
/// writes them straight into its log buffer, cheaper than building swift-log metadata per connection).
public struct ConnectionSummary: Sendable {
    public var peer: SocketAddress?
    public var via: SocketAddress?
    public var tls: TLSConnectionInfo?
    public var messages: Int
    public var bytesIn: Int
    public var bytesOut: Int
    public var duration: TimeAmount
    public var end: ConnectionEnd
    public var detail: String?
    public var isHealthCheck: Bool
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
