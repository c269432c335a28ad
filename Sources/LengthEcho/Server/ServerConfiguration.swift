import LengthEchoCore
import LengthEchoTLS
import Logging
import NIOCore

/// Everything the server can be told. The defaults are what `swift run server` does.
public struct ServerConfiguration: Sendable {
    /// The addresses to listen on. The default is every IPv4 address and, where the machine has IPv6,
    /// every IPv6 address.
    public var hosts: [String] = ServerConfiguration.allAddresses
    /// The TCP port; 0 asks the system for a free one (see `LengthEchoServer.port`).
    public var port: Int = 4000
    /// Listening sockets to adopt instead of binding `hosts` and `port` (systemd's socket activation): each is
    /// served on every event loop. The server takes them over and closes them when it stops.
    public var listeningSockets: [Int32] = []
    /// What ends each message and each reply: NUL (the original protocol) or a newline.
    public var framing: Framing = .nul
    /// The largest message accepted, in bytes, without its terminator. The original read at most 1024 bytes.
    public var maximumMessageLength: Int = 1 << 20
    /// A connection that sends nothing for this long is closed; one stalled mid-message is told why first. A
    /// peer that stops taking its replies for this long is closed too.
    public var idleTimeout: TimeAmount = .seconds(60)
    /// The longest a message may take from its first byte to its terminator, however steadily it trickles.
    public var messageTimeout: TimeAmount = .seconds(30)
    /// Connections beyond this many are answered `error: server busy` and closed.
    public var maximumConnections: Int = 10_000
    /// Connections from one address (the client's, after PROXY) beyond this many are answered
    /// `error: server busy: ...` and closed, before any TLS work. Nil: no limit.
    public var maximumConnectionsPerAddress: Int?
    /// TLS handshakes per second one address may make us start (a token bucket holding this many); over it,
    /// a connection is closed before any TLS work, with a log line at most once a second per address. Nil: no limit.
    public var handshakesPerSecondPerAddress: Int?
    /// Who may connect, by address (after PROXY), checked before any TLS work. Nil: everyone.
    public var addressPolicy: AddressPolicy?
    /// On shutdown, how long connections get to finish the message they are sending.
    public var drainTimeout: TimeAmount = .seconds(10)
    /// The listen backlog.
    public var backlog: Int32 = 4096
    /// Event-loop threads; the default is one per core.
    public var threads: Int = System.coreCount
    /// Pins each event loop to one of the CPUs the process may run on, and gives each new connection to the
    /// loop on the CPU that received it, so the kernel's and the server's work on a connection share one CPU
    /// and its caches. Cheaper per connection where the network card spreads its receive queues over the CPUs
    /// (multi-queue NICs, RPS); where one CPU receives everything, that CPU's loop gets every connection. Applies
    /// when the server makes its own event loops, to the addresses it binds (not to passed sockets).
    public var cpuAffinity = false
    /// With `cpuAffinity`: how often the spread of new connections over the loops is judged, and how many new
    /// connections a verdict needs (`LoopBalance`).
    var loopBalanceInterval: TimeAmount = .seconds(30)
    var loopBalanceMinimum = 1000
    /// TLS on every connection when set; plaintext otherwise. Its context is built once at start (and again at
    /// each `LengthEchoServer.reloadTLS(_:)`), shared by all connections.
    public var tls: TLSServerSettings?
    /// A TLS peer that has not finished its handshake after this long is dropped.
    public var handshakeTimeout: TimeAmount = .seconds(10)
    /// Behind a balancer: every connection must come from one of its addresses and begin with a PROXY
    /// protocol header, whose client becomes the connection's peer. Off (nil): connections are direct.
    public var proxyProtocol: ProxyProtocol?
    /// Called on the connection's event loop with each message received (the executable prints it), and
    /// who sent it: the client's address (behind a balancer, the one its PROXY header named).
    public var onMessage: (@Sendable (_ message: ByteBuffer, _ peer: SocketAddress?) -> Void)?
    /// Called on the connection's event loop as each connection ends, with what its line says; when nil, the
    /// line goes to `logger` at `info`.
    public var connectionLog: (@Sendable (ConnectionSummary) -> Void)?
    /// Diagnostics: one line per connection at `info` when it ends, and errors, timeouts, refusals.
    public var logger: Logger = Logger(label: "length-echo.server")

    /// `0.0.0.0` and `::`.
    public static let allAddresses = ["0.0.0.0", "::"]

    /// The defaults: plaintext on port 4000 of every address.
    public init() {}
}

extension ServerConfiguration {
    /// Which balancers may send PROXY protocol headers, and how long a header may take.
    public struct ProxyProtocol: Sendable {
        /// Connections from anywhere else are refused: a header is only believed from a balancer trusted to
        /// write it, or any client could claim any address.
        public var trustedSources: [AddressPolicy.AddressRange]
        /// A connection whose header is not complete this long after it was accepted is closed.
        public var headerTimeout: TimeAmount = .seconds(5)

        /// Headers believed from `trustedSources` only, complete within `headerTimeout` of accept.
        public init(trustedSources: [AddressPolicy.AddressRange], headerTimeout: TimeAmount = .seconds(5)) {
            self.trustedSources = trustedSources
            self.headerTimeout = headerTimeout
        }
    }
}

/// Spelled as before inside the package.
package typealias ProxyProtocolConfiguration = ServerConfiguration.ProxyProtocol
