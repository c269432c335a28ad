import LengthEchoCore
import LengthEchoTLS
import NIOCore

/// Where the client connects and how long it waits.
public struct ClientConfiguration: Sendable {
    /// A host name or an IPv4 or IPv6 address.
    public var host: String = "127.0.0.1"
    /// The server's port.
    public var port: Int = 4000
    /// What ends each message and each reply: NUL (the original protocol) or a newline.
    public var framing: Framing = .nul
    /// How long a connection may take to open.
    public var connectTimeout: TimeAmount = .seconds(5)
    /// How long a reply may take to arrive whole.
    public var replyTimeout: TimeAmount = .seconds(30)
    /// TLS when set: the context says what is trusted and whether a client certificate is presented.
    public var tls: TLSContext?
    /// The name sent as SNI and verified against the certificate; by default, `host`.
    public var serverName: String?
    /// How long the TLS handshake may take.
    public var handshakeTimeout: TimeAmount = .seconds(10)
    /// Replies longer than this (without their terminator) are refused as invalid.
    public var maximumReplyLength: Int = (1 << 20) + 32

    /// A plaintext client of `host`:`port`, NUL framing.
    public init(host: String = "127.0.0.1", port: Int = 4000) {
        self.host = host
        self.port = port
    }
}

/// A valid reply that echoes the message sent.
public struct EchoReply: Sendable, Equatable {
    /// The reply as it came, without its terminator: `11 : test_string`.
    public let bytes: [UInt8]
    /// The message's length as the server stated it.
    public let length: Int

    /// The reply as text (invalid UTF-8 is replaced).
    public var text: String { String(decoding: self.bytes, as: UTF8.self) }
}
