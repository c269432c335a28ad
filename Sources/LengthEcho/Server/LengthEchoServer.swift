import LengthEchoCore
import LengthEchoTLS
import Logging
import NIOCore
import NIOPosix
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A running length-echo server: the tutorial's `socket()`, `bind()`, `listen()` and `accept()`, on every
/// core. Start it with `start(configuration:)`, read `port`, and stop it with `shutdown()`.
public final class LengthEchoServer: Sendable {
    public let configuration: ServerConfiguration
    /// Where the server listens, one address per listening socket.
    public let localAddresses: [SocketAddress]
    private let listeners: [any Channel]
    private let tracker: ConnectionTracker
    private let tls: TLSContextHolder
    private let loopStates: [NIOLoopBound<ServerLoopState>]
    private let group: any EventLoopGroup
    private let ownsGroup: Bool

    /// The port the server listens on (the one the system chose, when configured with port 0).
    public var port: Int { self.localAddresses.first?.port ?? self.configuration.port }

    /// Serves new TLS connections with `context` from now on (a renewed certificate, say); connections
    /// already open keep the context they started with. Only for a server started with TLS.
    public func replaceTLSContext(_ context: TLSContext) {
        self.tls.replace(context)
    }

    /// The number of open client connections.
    public var connectionCount: Int { self.tracker.count }

    private init(
        configuration: ServerConfiguration,
        listeners: [any Channel],
        tracker: ConnectionTracker,
        tls: TLSContextHolder,
        loopStates: [NIOLoopBound<ServerLoopState>],
        group: any EventLoopGroup,
        ownsGroup: Bool
    ) {
        self.tls = tls
        self.loopStates = loopStates
        self.configuration = configuration
        self.listeners = listeners
        var seen = Set<String>()
        self.localAddresses = listeners.compactMap(\.localAddress).filter { seen.insert("\($0)").inserted }
        self.tracker = tracker
        self.group = group
        self.ownsGroup = ownsGroup
    }

    /// Binds every configured address and starts accepting.
    ///
    /// - Parameter group: the event loops to run on; by default the server makes one thread per core and
    ///   shuts them down with itself.
    /// - Throws: `LengthEchoError.bindFailed` with the reason a user can act on (port in use, permission,
    ///   no such address).
    public static func start(
        configuration: ServerConfiguration,
        group: (any EventLoopGroup)? = nil
    ) async throws -> LengthEchoServer {
        let ownsGroup = group == nil
        let group = group ?? MultiThreadedEventLoopGroup(numberOfThreads: max(1, configuration.threads))
        let tracker = ConnectionTracker(limit: configuration.maximumConnections)
        let tls = TLSContextHolder(configuration.tls)

        // One listening socket per event loop (SO_REUSEPORT): the kernel spreads connections over them, and
        // each connection lives on the loop that accepted it, with no hand-off between threads.
        let loops = Array(group.makeIterator())
        var loopStates: [NIOLoopBound<ServerLoopState>] = []
        for loop in loops {
            loopStates.append(
                try await loop.submit {
                    NIOLoopBound(ServerLoopState(loop: loop, configuration: configuration), eventLoop: loop)
                }.get()
            )
        }
        let states = Dictionary(uniqueKeysWithValues: zip(loops.map { ObjectIdentifier($0) }, loopStates))
        let listeners: [any Channel]
        do {
            listeners = try await Listeners.bind(configuration: configuration, loops: loops) { loop, ipv6Only in
                // `states` has an entry for every loop of `loops`.
                Self.bootstrap(
                    loop: loop,
                    loopState: states[ObjectIdentifier(loop)] ?? loopStates[0],
                    tls: tls,
                    configuration: configuration,
                    tracker: tracker,
                    ipv6Only: ipv6Only
                )
            }
        } catch {
            if ownsGroup { try? await group.shutdownGracefully() }
            throw error
        }
        return LengthEchoServer(
            configuration: configuration,
            listeners: listeners,
            tracker: tracker,
            tls: tls,
            loopStates: loopStates,
            group: group,
            ownsGroup: ownsGroup
        )
    }

    private static func bootstrap(
        loop: any EventLoop,
        loopState: NIOLoopBound<ServerLoopState>,
        tls: TLSContextHolder,
        configuration: ServerConfiguration,
        tracker: ConnectionTracker,
        ipv6Only: Bool
    ) -> ServerBootstrap {
        var bootstrap = ServerBootstrap(group: loop, childGroup: loop)
            .serverChannelOption(.backlog, value: configuration.backlog)
            // A restarted server binds at once, even while old connections sit in TIME_WAIT.
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelOption(
                ChannelOptions.Types.SocketOption(level: .socket, name: NIOBSDSocket.Option(rawValue: SO_REUSEPORT)),
                value: 1
            )
            // Set on the listener, TCP_NODELAY is inherited by every accepted socket: one syscall fewer each.
            .serverChannelOption(.tcpOption(.tcp_nodelay), value: 1)
        if ipv6Only {
            // `::` and `0.0.0.0` are separate sockets on the same port.
            bootstrap = bootstrap.serverChannelOption(
                ChannelOptions.Types.SocketOption(level: .ipv6, name: .ipv6_v6only), value: 1)
        }
        return
            bootstrap
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    // The child lives on the loop that accepted it, which owns this state.
                    try ConnectionPipeline.configure(
                        channel,
                        configuration: configuration,
                        loopState: loopState.value,
                        tls: tls.current,
                        tracker: tracker
                    )
                }
            }
    }

    /// Drains and stops: the listeners close; messages already received are answered; a connection just
    /// accepted or just answered gets a short grace to send its next message, which is answered too; idle
    /// connections close at once; connections still open after `drainTimeout` are closed.
    public func shutdown() async {
        for listener in self.listeners {
            try? await listener.close()
        }
        let drained = self.loopStates.map { state in state.eventLoop.flatSubmit { state.value.drain() } }
        let loop = self.group.next()
        let states = self.loopStates
        let timeout = loop.scheduleTask(in: self.configuration.drainTimeout) {
            for state in states { state.eventLoop.execute { state.value.closeAll() } }
        }
        try? await EventLoopFuture.andAllComplete(drained, on: loop).get()
        timeout.cancel()
        if self.ownsGroup {
            try? await self.group.shutdownGracefully()
        }
    }
}

/// The server's TLS context: immutable, but replaceable as a whole (a certificate reload) for new connections.
final class TLSContextHolder: Sendable {
    private let context: Mutex<TLSContext?>

    init(_ context: TLSContext?) {
        self.context = Mutex(context)
    }

    var current: TLSContext? { self.context.withLock { $0 } }

    /// A plaintext server stays plaintext.
    func replace(_ context: TLSContext) {
        self.context.withLock { current in
            if current != nil { current = context }
        }
    }
}
