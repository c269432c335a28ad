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
#endif

/// A running length-echo server: the tutorial's `socket()`, `bind()`, `listen()` and `accept()`, on every
/// core. Start it with `start(configuration:)`, read `port`, and stop it with `shutdown()`.
public final class LengthEchoServer: Sendable {
    /// What the server was started with.
    public var configuration: ServerConfiguration { self.live.withLock { $0 } }
    /// The configuration as it stands: the one started with, as reloads (`apply`) have changed it.
    private let live: Mutex<ServerConfiguration>
    /// Where the server listens, one address per listening socket.
    public let localAddresses: [SocketAddress]
    /// With `cpuAffinity`: the CPU each event loop is pinned to, in loop order; nil otherwise.
    public let pinnedCPUs: [Int]?
    private let listeners: [any Channel]
    private let tracker: ConnectionTracker
    /// The per-address limits (a reload changes them).
    private let limits: AddressLimits
    private let tls: TLSContextHolder
    private let loopStates: [NIOLoopBound<ServerLoopState>]
    let group: any EventLoopGroup
    private let ownsGroup: Bool
    private let metrics: ServerMetrics
    private let draining = Atomic<Bool>(false)
    /// With CPU affinity: the periodic check of how evenly connections spread over the loops.
    private let balanceWatch: RepeatedTask?
    /// Channels that live on the server's event loops and end with it (the status port): closed after the
    /// drain, before the loops stop.
    private let companions = Mutex<[any Channel]>([])

    /// The port the server listens on (the one the system chose, when configured with port 0).
    public var port: Int { self.localAddresses.first?.port ?? self.configuration.port }

    /// Builds a context from `settings` (a renewed certificate, say) and serves new TLS connections with it;
    /// connections already open keep the context they started with. If it cannot be built, nothing changes and
    /// the error says why. Only for a server started with TLS.
    @discardableResult
    public func reloadTLS(_ settings: TLSServerSettings) throws(TLSError) -> TLSContext {
        let context = try TLSContext.server(settings)
        self.replaceTLSContext(context)
        return context
    }

    /// The settings a running server takes from a new configuration (a reload), for the connections accepted
    /// after it: the address policy, the message size, the idle, message, handshake and drain timeouts, and the
    /// connection cap. Anything else needs a restart.
    public static let reloadableSettings: Set<ServerConfiguration.Setting> = [
        .addressPolicy, .maximumMessageLength, .idleTimeout, .messageTimeout, .handshakeTimeout, .drainTimeout,
        .maximumConnections, .maximumConnectionsPerAddress, .handshakesPerSecondPerAddress, .proxyTrustedSources,
        .proxyHeaderTimeout,
    ]

    /// Applies `new`'s reloadable settings (`reloadableSettings`) to the connections accepted from now on; those
    /// open keep theirs. `new` is checked in full first: if it has a problem, nothing changes. (TLS: `reloadTLS`.)
    public func apply(_ new: ServerConfiguration) throws(ServerConfiguration.Problem) {
        try new.validate()
        let applied = self.live.withLock { live in
            live.addressPolicy = new.addressPolicy
            live.maximumMessageLength = new.maximumMessageLength
            live.idleTimeout = new.idleTimeout
            live.messageTimeout = new.messageTimeout
            live.handshakeTimeout = new.handshakeTimeout
            live.drainTimeout = new.drainTimeout
            live.maximumConnections = new.maximumConnections
            live.maximumConnectionsPerAddress = new.maximumConnectionsPerAddress
            live.handshakesPerSecondPerAddress = new.handshakesPerSecondPerAddress
            // Whether PROXY is spoken needs a restart; whom to believe and how long to wait for a header do not.
            if live.proxyProtocol != nil, let proxy = new.proxyProtocol { live.proxyProtocol = proxy }
            return live
        }
        self.tracker.limit = applied.maximumConnections
        self.limits.maximumOpen = applied.maximumConnectionsPerAddress
        self.limits.handshakesPerSecond = applied.handshakesPerSecondPerAddress
        for state in self.loopStates {
            state.eventLoop.execute { state.value.apply(applied) }
        }
    }

    /// Serves new TLS connections with `context` from now on.
    package func replaceTLSContext(_ context: TLSContext) {
        self.tls.replace(context)
        self.metrics.certificate(notAfter: context.certificateNotAfter)
    }

    /// The TLS context new connections get (nil for plaintext).
    public var currentTLSContext: TLSContext? { self.tls.current }

    /// Whether a balancer should send new connections: listening, not draining, and below the connection cap.
    public var readiness: Readiness {
        if self.draining.load(ordering: .relaxed) { return .draining }
        if self.tracker.count >= self.tracker.limit { return .full }
        return .ready
    }

    /// Whether a balancer should send new connections (`/readyz`).
    public enum Readiness: Sendable, Equatable {
        /// Listening, not draining, below the connection cap.
        case ready
        /// A drain has begun: the listeners are closing or closed.
        case draining
        /// The connection cap is reached.
        case full
    }

    /// Closes `channel` when the server stops, after the drain and before its event loops stop.
    func addCompanion(_ channel: any Channel) {
        self.companions.withLock { $0.append(channel) }
    }

    /// Returns once every event loop has run a task: they are all turning (for a watchdog).
    package func eventLoopsAnswer() async {
        for state in self.loopStates {
            try? await state.eventLoop.submit {}.get()
        }
    }

    /// Folds every event loop's counts (open connections as they stand) and publishes them through
    /// swift-metrics, so what the metrics backend shows next includes every message answered before this call.
    package func publishMetrics() async {
        let totals = self.loopStates.map { state in state.eventLoop.submit { state.value.totals() } }
        var sum = ConnectionTotals()
        var accepted: [Int] = []
        for future in totals {
            // A loop that cannot answer is stopping with the server: publish nothing rather than a sum without it
            // (counters only grow, so its connections would be counted again once it answered).
            guard let loop = try? await future.get() else { return }
            sum.add(loop)
            accepted.append(loop.accepted)
        }
        self.metrics.publish(sum, open: self.tracker.count, acceptedByLoop: accepted)
    }

    /// The number of open client connections.
    public var connectionCount: Int { self.tracker.count }

    private init(
        configuration: ServerConfiguration,
        listeners: [any Channel],
        tracker: ConnectionTracker,
        limits: AddressLimits,
        tls: TLSContextHolder,
        loopStates: [NIOLoopBound<ServerLoopState>],
        group: any EventLoopGroup,
        ownsGroup: Bool,
        pinnedCPUs: [Int]?,
        balanceWatch: RepeatedTask?,
        metrics: ServerMetrics
    ) {
        self.metrics = metrics
        self.tls = tls
        self.loopStates = loopStates
        self.live = Mutex(configuration)
        self.listeners = listeners
        var seen = Set<String>()
        self.localAddresses = listeners.compactMap(\.localAddress).filter { seen.insert("\($0)").inserted }
        self.tracker = tracker
        self.limits = limits
        self.group = group
        self.ownsGroup = ownsGroup
        self.pinnedCPUs = pinnedCPUs
        self.balanceWatch = balanceWatch
    }

    /// Binds every configured address and starts accepting.
    ///
    /// - Parameters:
    ///   - configuration: what to serve and how; checked with `ServerConfiguration.validate()` first.
    ///   - group: the event loops to run on; by default the server makes one thread per core and
    ///     shuts them down with itself.
    /// - Throws: `LengthEchoError.bindFailed` with the reason a user can act on (port in use, permission,
    ///   no such address).
    public static func start(
        configuration: ServerConfiguration,
        group: (any EventLoopGroup)? = nil
    ) async throws -> LengthEchoServer {
        // Everything that can be checked before a socket is bound or a thread started.
        try configuration.validate()
        let context = try configuration.tls.map { settings throws(TLSError) in try TLSContext.server(settings) }
        let ownsGroup = group == nil
        var loopCPUs: [Int]?
        if configuration.cpuAffinity {
            if !ownsGroup {
                configuration.logger.warning("CPU affinity applies only to the server's own event loops: ignored")
            } else if let allowed = CPUSteering.allowedCPUs() {
                loopCPUs = CPUSteering.loopCPUs(threads: max(1, configuration.threads), allowed: allowed)
                if configuration.threads > allowed.count {
                    configuration.logger.warning(
                        "CPU affinity: \(configuration.threads) event loops share \(allowed.count) CPUs; only the first loop on each CPU is given new connections"
                    )
                }
            } else {
                configuration.logger.warning("the CPUs this process may run on are unknown: event loops are not pinned")
            }
        }
        let group =
            group
            ?? loopCPUs.map { MultiThreadedEventLoopGroup(pinnedCPUIDs: $0) }
            ?? MultiThreadedEventLoopGroup(numberOfThreads: max(1, configuration.threads))
        let tracker = ConnectionTracker(limit: configuration.maximumConnections)
        let limits = AddressLimits(
            maximumOpen: configuration.maximumConnectionsPerAddress,
            handshakesPerSecond: configuration.handshakesPerSecondPerAddress)
        let tls = TLSContextHolder(context)
        let admission = Admission(
            limits: limits, tracker: tracker, tls: configuration.tls != nil)
        let loops = Array(group.makeIterator())
        let metrics = ServerMetrics(loops: loops.count, tls: configuration.tls != nil)
        metrics.certificate(notAfter: context?.certificateNotAfter)

        // One listening socket per event loop (SO_REUSEPORT): the kernel spreads connections over them, and
        // each connection lives on the loop that accepted it, with no hand-off between threads.
        var loopStates: [NIOLoopBound<ServerLoopState>] = []
        for loop in loops {
            loopStates.append(
                try await loop.submit {
                    NIOLoopBound(
                        ServerLoopState(loop: loop, configuration: configuration, metrics: metrics), eventLoop: loop)
                }.get()
            )
        }
        let states = Dictionary(uniqueKeysWithValues: zip(loops.map { ObjectIdentifier($0) }, loopStates))
        let listeners: [any Channel]
        do {
            listeners = try await Listeners.bind(configuration: configuration, loops: loops, loopCPUs: loopCPUs) {
                loop, ipv6Only in
                // `states` has an entry for every loop of `loops`.
                Self.bootstrap(
                    loop: loop,
                    // Each connection stays on the loop that accepted it. (A socket systemd passed is accepted on one
                    // loop; handing its connections to other loops left a few per restart unserved.)
                    childGroup: loop,
                    loopStates: states,
                    fallback: loopStates[0],
                    tls: tls,
                    configuration: configuration,
                    admission: admission,
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
            limits: limits,
            tls: tls,
            loopStates: loopStates,
            group: group,
            ownsGroup: ownsGroup,
            pinnedCPUs: loopCPUs,
            balanceWatch: loopCPUs == nil ? nil : Self.watchBalance(of: loopStates, configuration: configuration),
            metrics: metrics
        )
    }

    /// Every `loopBalanceInterval`, judges how evenly new connections spread over the loops (`LoopBalance`) and
    /// warns once when one loop takes nearly all of them. Nil with one loop, or with passed sockets (each is
    /// served by one loop anyway).
    private static func watchBalance(
        of loopStates: [NIOLoopBound<ServerLoopState>], configuration: ServerConfiguration
    ) -> RepeatedTask? {
        guard configuration.listeningSockets.isEmpty, loopStates.count >= 2, let loop = loopStates.first?.eventLoop
        else { return nil }
        let balance = NIOLoopBoundBox.makeBoxSendingValue(
            LoopBalance(loops: loopStates.count, minimumConnections: configuration.loopBalanceMinimum), eventLoop: loop)
        let logger = configuration.logger
        let interval = configuration.loopBalanceInterval
        return loop.scheduleRepeatedAsyncTask(initialDelay: interval, delay: interval) { _ in
            let counts = loopStates.map { state in state.eventLoop.submit { state.value.accepted } }
            return EventLoopFuture.whenAllSucceed(counts, on: loop).map { accepted in
                if let warning = balance.value.check(accepted: accepted) { logger.warning("\(warning)") }
            }
        }
    }

    private static func bootstrap(
        loop: any EventLoop,
        childGroup: any EventLoopGroup,
        loopStates: [ObjectIdentifier: NIOLoopBound<ServerLoopState>],
        fallback: NIOLoopBound<ServerLoopState>,
        tls: TLSContextHolder,
        configuration: ServerConfiguration,
        admission: Admission,
        ipv6Only: Bool
    ) -> ServerBootstrap {
        var bootstrap = ServerBootstrap(group: loop, childGroup: childGroup)
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
                    // The state of the child's own loop (the one that accepted it, unless the socket was passed).
                    // `loopStates` has an entry for every loop of the group.
                    try ConnectionPipeline.configure(
                        channel,
                        loopState: (loopStates[ObjectIdentifier(channel.eventLoop)] ?? fallback).value,
                        tls: tls.current,
                        admission: admission
                    )
                }
            }
    }

    /// Drains and stops: the listeners close; messages already received are answered; a connection just
    /// accepted or just answered gets a short grace to send its next message, which is answered too; idle
    /// connections close at once; connections still open after `drainTimeout` are closed.
    public func shutdown() async {
        self.draining.store(true, ordering: .relaxed)
        self.balanceWatch?.cancel()
        for listener in self.listeners {
            try? await listener.close()
        }
        // Connections accepted just before the listeners closed may still be being set up on their loops (as
        // tasks queued there): let every loop run them before draining, so the drain sees them.
        for state in self.loopStates {
            try? await state.eventLoop.submit {}.get()
        }
        let drained = self.loopStates.map { state in state.eventLoop.flatSubmit { state.value.drain() } }
        let loop = self.group.next()
        let states = self.loopStates
        let timeout = loop.scheduleTask(in: self.configuration.drainTimeout) {
            for state in states { state.eventLoop.execute { state.value.closeAll() } }
        }
        try? await EventLoopFuture.andAllComplete(drained, on: loop).get()
        timeout.cancel()
        for channel in self.companions.withLock({ $0 }) {
            try? await channel.close()
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
