#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import LengthEchoTLS
import Logging
import NIOCore
import NIOPosix
import Synchronization

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
        var listeners: [any Channel] = []
        var port = configuration.port

        func giveUp(_ error: LengthEchoError) async throws -> Never {
            for listener in listeners { try? await listener.close() }
            if ownsGroup { try? await group.shutdownGracefully() }
            throw error
        }

        // One listening socket per event loop (SO_REUSEPORT): the kernel spreads connections over them, and
        // each connection lives on the loop that accepted it, with no hand-off between threads.
        let loops = Array(group.makeIterator())
        var loopStates: [NIOLoopBound<ServerLoopState>] = []
        for loop in loops {
            let idleTimeout = configuration.idleTimeout
            loopStates.append(
                try await loop.submit { NIOLoopBound(ServerLoopState(loop: loop, idleTimeout: idleTimeout), eventLoop: loop) }.get()
            )
        }
        for host in configuration.hosts {
            let address: SocketAddress
            do {
                address = try SocketAddress.makeAddressResolvingHost(host, port: port)
            } catch {
                try await giveUp(.bindFailed(host: host, port: port, reason: "no such host or address"))
            }
            let usingDefaults = configuration.hosts == ServerConfiguration.allAddresses
            // SO_REUSEPORT would let us share a port another server of this user already holds; check first.
            if port != 0, let errno = Self.probe(address), errno != 0 {
                if usingDefaults, address.protocol == .inet6, errno == EAFNOSUPPORT || errno == EADDRNOTAVAIL {
                    configuration.logger.info("IPv6 is not available here; listening on IPv4 only")
                    continue
                }
                try await giveUp(.bindFailed(host: host, port: port, reason: Self.explain(errno: errno, port: port)))
            }
            for (loop, loopState) in zip(loops, loopStates) {
                do {
                    let listener = try await Self.bootstrap(
                        loop: loop,
                        loopState: loopState,
                        tls: tls,
                        configuration: configuration,
                        tracker: tracker,
                        ipv6Only: address.protocol == .inet6
                    ).bind(to: try SocketAddress.makeAddressResolvingHost(host, port: port)).get()
                    listeners.append(listener)
                    if port == 0 { port = listener.localAddress?.port ?? 0 }
                } catch {
                    let errno = (error as? IOError)?.errnoCode
                    if usingDefaults, address.protocol == .inet6, errno == EAFNOSUPPORT || errno == EADDRNOTAVAIL {
                        configuration.logger.info("IPv6 is not available here; listening on IPv4 only")
                        break
                    }
                    try await giveUp(.bindFailed(host: host, port: port, reason: Self.explain(error, port: port)))
                }
            }
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
            .serverChannelOption(ChannelOptions.Types.SocketOption(level: .socket, name: NIOBSDSocket.Option(rawValue: SO_REUSEPORT)), value: 1)
            // Set on the listener, TCP_NODELAY is inherited by every accepted socket: one syscall fewer each.
            .serverChannelOption(.tcpOption(.tcp_nodelay), value: 1)
        if ipv6Only {
            // `::` and `0.0.0.0` are separate sockets on the same port.
            bootstrap = bootstrap.serverChannelOption(ChannelOptions.Types.SocketOption(level: .ipv6, name: .ipv6_v6only), value: 1)
        }
        return bootstrap
            .childChannelInitializer { channel in
                guard tracker.admit() else {
                    configuration.logger.warning(
                        "refusing a connection: \(tracker.limit) connections are open (--max-connections)"
                    )
                    return channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(BusyRejectHandler(limit: tracker.limit))
                    }
                }
                return channel.eventLoop.makeCompletedFuture {
                    // Set here, synchronously, rather than as a child option applied through futures.
                    // A client's half-close is its last message, not the end of the conversation.
                    try channel.syncOptions?.setOption(.allowRemoteHalfClosure, value: true)
                    // The child lives on the loop that accepted it, which owns these buffers.
                    let loopState = loopState.value
                    if let context = tls.current {
                        try channel.pipeline.syncOperations.addHandler(
                            TLSHandler(
                                context: context,
                                handshakeTimeout: configuration.handshakeTimeout,
                                buffers: loopState.buffers,
                                logger: configuration.logger
                            )
                        )
                    }
                    try channel.pipeline.syncOperations.addHandler(
                        LengthEchoServerHandler(
                            configuration: configuration,
                            loopState: loopState,
                            tracker: tracker
                        )
                    )
                }
            }
    }

    /// Binds a plain socket (SO_REUSEADDR only) to `address` and closes it: 0 if the address is free, else the errno.
    static func probe(_ address: SocketAddress) -> Int32? {
        let fd = socket(Int32(address.protocol.rawValue), Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return errno }
        defer { close(fd) }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        if address.protocol == .inet6 {
            setsockopt(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &one, socklen_t(MemoryLayout<Int32>.size))
        }
        let result = address.withSockAddr { pointer, size in bind(fd, pointer, socklen_t(size)) }
        return result == 0 ? 0 : errno
    }

    /// A sentence for why a listening socket could not be opened.
    static func explain(_ error: any Error, port: Int) -> String {
        guard let errno = (error as? IOError)?.errnoCode else { return "\(error)" }
        return Self.explain(errno: errno, port: port)
    }

    static func explain(errno: Int32, port: Int) -> String {
        switch errno {
        case EADDRINUSE:
            return "port \(port) is already in use (is another server running? stop it or pick another --port)"
        case EACCES:
            return "permission denied: ports below 1024 need root or CAP_NET_BIND_SERVICE"
        case EADDRNOTAVAIL:
            return "this machine has no such address (check --host)"
        case EAFNOSUPPORT:
            return "this machine does not support that address family"
        default:
            return String(cString: strerror(errno))
        }
    }

    /// Drains and stops: no new connections are accepted, messages already received are answered, idle
    /// connections are closed, and connections still busy after `drainTimeout` are closed.
    public func shutdown() async {
        for listener in self.listeners {
            try? await listener.close()
        }
        self.tracker.beginDrain()
        var draining: [any Channel] = []
        for state in self.loopStates {
            if let channels = try? await state.eventLoop.submit({ state.value.drain() }).get() {
                draining += channels
            }
        }
        let open = draining
        if !open.isEmpty {
            let loop = self.group.next()
            let timeout = loop.scheduleTask(in: self.configuration.drainTimeout) {
                for channel in open { channel.close(promise: nil) }
            }
            try? await EventLoopFuture.andAllComplete(open.map(\.closeFuture), on: loop).get()
            timeout.cancel()
        }
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
