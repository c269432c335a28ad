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

/// A running length-echo server: the tutorial's `socket()`, `bind()`, `listen()` and `accept()`, on every
/// core. Start it with `start(configuration:)`, read `port`, and stop it with `shutdown()`.
public final class LengthEchoServer: Sendable {
    public let configuration: ServerConfiguration
    /// Where the server listens, one address per listening socket.
    public let localAddresses: [SocketAddress]
    private let listeners: [any Channel]
    private let tracker: ConnectionTracker
    private let group: any EventLoopGroup
    private let ownsGroup: Bool

    /// The port the server listens on (the one the system chose, when configured with port 0).
    public var port: Int { self.localAddresses.first?.port ?? self.configuration.port }

    /// The number of open client connections.
    public var connectionCount: Int { self.tracker.count }

    private init(
        configuration: ServerConfiguration,
        listeners: [any Channel],
        tracker: ConnectionTracker,
        group: any EventLoopGroup,
        ownsGroup: Bool
    ) {
        self.configuration = configuration
        self.listeners = listeners
        self.localAddresses = listeners.compactMap(\.localAddress)
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
        var listeners: [any Channel] = []
        var port = configuration.port

        func giveUp(_ error: LengthEchoError) async throws -> Never {
            for listener in listeners { try? await listener.close() }
            if ownsGroup { try? await group.shutdownGracefully() }
            throw error
        }

        for host in configuration.hosts {
            let address: SocketAddress
            do {
                address = try SocketAddress.makeAddressResolvingHost(host, port: port)
            } catch {
                try await giveUp(.bindFailed(host: host, port: port, reason: "no such host or address"))
            }
            do {
                let listener = try await Self.bootstrap(
                    group: group,
                    configuration: configuration,
                    tracker: tracker,
                    ipv6Only: address.protocol == .inet6
                ).bind(to: address).get()
                listeners.append(listener)
                if port == 0 { port = listener.localAddress?.port ?? 0 }
            } catch {
                let errno = (error as? IOError)?.errnoCode
                let usingDefaults = configuration.hosts == ServerConfiguration.allAddresses
                if usingDefaults, address.protocol == .inet6, errno == EAFNOSUPPORT || errno == EADDRNOTAVAIL {
                    configuration.logger.info("IPv6 is not available here; listening on IPv4 only")
                    continue
                }
                try await giveUp(.bindFailed(host: host, port: port, reason: Self.explain(error, port: port)))
            }
        }
        return LengthEchoServer(
            configuration: configuration,
            listeners: listeners,
            tracker: tracker,
            group: group,
            ownsGroup: ownsGroup
        )
    }

    private static func bootstrap(
        group: any EventLoopGroup,
        configuration: ServerConfiguration,
        tracker: ConnectionTracker,
        ipv6Only: Bool
    ) -> ServerBootstrap {
        var bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: configuration.backlog)
            // A restarted server binds at once, even while old connections sit in TIME_WAIT.
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
        if ipv6Only {
            // `::` and `0.0.0.0` are separate sockets on the same port.
            bootstrap = bootstrap.serverChannelOption(ChannelOptions.Types.SocketOption(level: .ipv6, name: .ipv6_v6only), value: 1)
        }
        return bootstrap
            .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelInitializer { channel in
                guard tracker.admit(channel) else {
                    configuration.logger.warning(
                        "refusing a connection: \(tracker.limit) connections are open (--max-connections)"
                    )
                    return channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(BusyRejectHandler(limit: tracker.limit))
                    }
                }
                return channel.eventLoop.makeCompletedFuture {
                    if let tls = configuration.tls {
                        try channel.pipeline.syncOperations.addHandler(
                            TLSHandler(context: tls, handshakeTimeout: configuration.handshakeTimeout, logger: configuration.logger)
                        )
                    }
                    try channel.pipeline.syncOperations.addHandler(
                        LengthEchoServerHandler(configuration: configuration, allocator: channel.allocator)
                    )
                }
            }
    }

    /// A sentence for why a listening socket could not be opened.
    static func explain(_ error: any Error, port: Int) -> String {
        guard let errno = (error as? IOError)?.errnoCode else { return "\(error)" }
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
        let open = self.tracker.beginDrain()
        for channel in open {
            channel.pipeline.fireUserInboundEventTriggered(DrainEvent())
        }
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
