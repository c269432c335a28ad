import Dispatch
import Histogram
import LengthEcho
import LengthEchoCore
import LengthEchoTLS
import NIOCore
import NIOPosix
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// What one run drives: where, how, and what every reply must be.
struct LoadPlan: Sendable {
    enum Mode: String, Sendable {
        /// connect, [handshake], send, reply, close: how the original client behaves.
        case perRequest = "per-request"
        /// one connection per worker; the next message goes as soon as the reply arrives.
        case persistent
    }

    var address: SocketAddress
    /// Local addresses to connect from, taken in turn by the workers (none: the system picks).
    var sources: [SocketAddress]
    var serverName: String
    var mode: Mode
    var message: ByteBuffer
    /// The exact reply every message must get.
    var expected: [UInt8]
    var tls: TLSContext?
    var resume: Bool
    var replyTimeout: TimeAmount
    /// How long each connection waits after a reply before its next request (zero: none, as fast as it can).
    var pause: TimeAmount = .zero
    var measureFrom: NIODeadline
    var stopAt: NIODeadline
}

enum ErrorKind: String, CaseIterable, Sendable {
    case connect, tls, wrongReply = "wrong reply", timeout, closedEarly = "closed early"
}

/// Counters for one worker, merged at the end. Only requests completed inside the measured window count.
struct WorkerStats: Sendable {
    var requests = 0
    var bytes = 0
    var handshakes = 0
    var resumed = 0
    /// New connections made because the server closed one between messages (not errors).
    var reconnects = 0
    /// Messages sent again because the server closed the connection before their reply began (length-echo
    /// requests are idempotent); not errors.
    var resends = 0
    var errors: [ErrorKind: Int] = [:]
    /// The first error of each kind, as it was reported (to say why when nothing succeeded).
    var firstErrors: [ErrorKind: String] = [:]
    var latency = Histogram<UInt64>(highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: .three)

    mutating func merge(_ other: WorkerStats) {
        self.requests += other.requests
        self.bytes += other.bytes
        self.handshakes += other.handshakes
        self.resumed += other.resumed
        self.reconnects += other.reconnects
        self.resends += other.resends
        for (kind, count) in other.errors { self.errors[kind, default: 0] += count }
        self.firstErrors.merge(other.firstErrors) { first, _ in first }
        self.latency.add(other.latency)
    }
}

/// SIGINT or SIGTERM: every worker stops before its next request, and the run reports what it measured.
enum StopRequest {
    static let requested = Atomic<Bool>(false)

    /// Traps SIGINT and SIGTERM for the rest of the process.
    static func trap() {
        for number in [SIGINT, SIGTERM] {
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler { Self.requested.store(true, ordering: .relaxed) }
            source.resume()
            Self.sources.append(source)
        }
    }

    /// Kept for the life of the process. Written by `trap`, once, before any worker starts; never read.
    nonisolated(unsafe) private static var sources: [any DispatchSourceSignal] = []
}

/// Live totals for the progress line: written by one event loop, read once a second by the reporter.
final class Progress: Sendable {
    let requests = Atomic<Int>(0)
    let errors = Atomic<Int>(0)
}

/// One simulated client: a loop of connections and requests on one event loop.
final class Worker {
    let plan: LoadPlan
    let loop: any EventLoop
    var stats = WorkerStats()
    let progress: Progress
    private var session: TLSSession?
    private let finished: EventLoopPromise<WorkerStats>
    private var done = false
    private let shared: Shared
    private let source: SocketAddress?
    /// Times in a row the current message was resent; bounded, so a server that closes every connection
    /// makes errors, not a loop.
    private var resendsInARow = 0
    static let mostResends = 3

    /// A request budget shared by the workers of one event loop (for --requests).
    final class Shared {
        var remaining: Int?
        let buffers = LoopBuffers()
        init(remaining: Int?) { self.remaining = remaining }
    }

    init(plan: LoadPlan, loop: any EventLoop, progress: Progress, shared: Shared, index: Int) {
        self.plan = plan
        self.source = plan.sources.isEmpty ? nil : plan.sources[index % plan.sources.count]
        self.loop = loop
        self.progress = progress
        self.shared = shared
        self.finished = loop.makePromise(of: WorkerStats.self)
    }

    var result: EventLoopFuture<WorkerStats> { self.finished.futureResult }

    var measuring: Bool { NIODeadline.now() >= self.plan.measureFrom }

    /// Whether another request may start.
    func mayContinue() -> Bool {
        if NIODeadline.now() >= self.plan.stopAt || StopRequest.requested.load(ordering: .relaxed) { return false }
        if let remaining = self.shared.remaining {
            if remaining <= 0 { return false }
            self.shared.remaining = remaining - 1
        }
        return true
    }

    func finish() {
        guard !self.done else { return }
        self.done = true
        self.finished.succeed(self.stats)
    }

    func count(_ kind: ErrorKind, _ error: (any Error)? = nil) {
        if self.measuring { self.stats.errors[kind, default: 0] += 1 }
        if let error, self.stats.firstErrors[kind] == nil { self.stats.firstErrors[kind] = "\(error)" }
        self.progress.errors.add(1, ordering: .relaxed)
    }

    func start() {
        guard self.mayContinue() else {
            self.finish()
            return
        }
        self.connect()
    }

    private func connect() {
        let bound = NIOLoopBound(self, eventLoop: self.loop)
        let plan = self.plan
        let session = plan.resume ? self.session : nil
        let sessionBox = NIOLoopBound(session, eventLoop: self.loop)
        let buffersBox = NIOLoopBound(self.shared.buffers, eventLoop: self.loop)
        var bootstrap = ClientBootstrap(group: self.loop)
        if let source = self.source { bootstrap = bootstrap.bind(to: source) }
        bootstrap
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .connectTimeout(.seconds(10))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let tls = plan.tls {
                        try channel.pipeline.syncOperations.addHandler(
                            TLSHandler(
                                context: tls, expectedHost: plan.serverName, resuming: sessionBox.value,
                                buffers: buffersBox.value)
                        )
                    }
                    try channel.pipeline.syncOperations.addHandler(BenchHandler(worker: bound.value))
                }
            }
            .connect(to: plan.address)
            .assumeIsolated()
            .whenFailure { error in
                self.count(.connect, error)
                // Back off briefly so a refusing server is not hammered in a tight loop.
                self.loop.assumeIsolated().scheduleTask(in: .milliseconds(10)) { self.start() }
            }
    }

    /// Called by the handler when a connection ends; per-request mode opens the next one.
    func connectionEnded(session: TLSSession?) {
        if let session { self.session = session }
        self.afterPause { $0.start() }
    }

    /// Runs `next` once the plan's pause has passed (at once without one).
    func afterPause(_ next: @escaping (Worker) -> Void) {
        guard self.plan.pause > .zero else { return next(self) }
        self.loop.assumeIsolated().scheduleTask(in: self.plan.pause) { next(self) }
    }

    /// A reply came: the message in flight is done.
    func answered() {
        self.resendsInARow = 0
    }

    /// The server closed a persistent connection between messages (an idle timeout, a drain): the next
    /// message goes on a new one.
    func reconnect() {
        if self.measuring { self.stats.reconnects += 1 }
        self.start()
    }

    /// The server closed the connection before the reply to the message in flight began: send it again on a
    /// new connection, a few times at most.
    func resend() {
        self.resendsInARow += 1
        guard self.resendsInARow <= Self.mostResends else {
            self.resendsInARow = 0
            self.count(.closedEarly)
            self.start()
            return
        }
        if self.measuring { self.stats.resends += 1 }
        if NIODeadline.now() >= self.plan.stopAt {
            self.finish()
        } else {
            self.connect()
        }
    }
}

/// Sends a message, checks the reply byte for byte as it arrives, records the latency, and goes on.
final class BenchHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let worker: Worker
    private var matched = 0
    private var sentAt: UInt64 = 0
    private var waiting = false
    private var timeout: Scheduled<Void>?
    private var ended = false

    init(worker: Worker) {
        self.worker = worker
    }

    func channelActive(context: ChannelHandlerContext) {
        if self.worker.plan.tls == nil { self.send(context: context) }
        context.fireChannelActive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .handshakeCompleted(let info)? = event as? TLSEvent {
            if self.worker.measuring {
                self.worker.stats.handshakes += 1
                if info.resumed { self.worker.stats.resumed += 1 }
            }
            self.send(context: context)
        }
    }

    private func send(context: ChannelHandlerContext) {
        self.matched = 0
        self.waiting = true
        self.sentAt = MonotonicClock.now()
        context.writeAndFlush(self.wrapOutboundOut(self.worker.plan.message), promise: nil)
        self.timeout?.cancel()
        self.timeout = context.eventLoop.assumeIsolated().scheduleTask(in: self.worker.plan.replyTimeout) {
            self.worker.count(.timeout)
            self.waiting = false
            context.close(promise: nil)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let bytes = self.unwrapInboundIn(data)
        guard self.waiting else {
            self.worker.count(.wrongReply)
            context.close(promise: nil)
            return
        }
        let expected = self.worker.plan.expected
        let ok = bytes.withUnsafeReadableBytes { received -> Bool in
            guard self.matched + received.count <= expected.count else { return false }
            guard received.count > 0 else { return true }
            return expected.withUnsafeBytes { want in
                guard let wanted = want.baseAddress, let got = received.baseAddress else { return false }
                return memcmp(wanted + self.matched, got, received.count) == 0
            }
        }
        guard ok else {
            self.worker.count(.wrongReply)
            self.waiting = false
            context.close(promise: nil)
            return
        }
        self.matched += bytes.readableBytes
        guard self.matched == expected.count else { return }

        self.waiting = false
        self.timeout?.cancel()
        let worker = self.worker
        worker.answered()
        if worker.measuring && NIODeadline.now() <= worker.plan.stopAt {
            worker.stats.requests += 1
            worker.stats.bytes += worker.plan.message.readableBytes + expected.count
            _ = worker.stats.latency.record((MonotonicClock.now() - self.sentAt) / 1000)
        }
        worker.progress.requests.add(1, ordering: .relaxed)
        switch worker.plan.mode {
        case .persistent:
            if worker.mayContinue() {
                if worker.plan.pause > .zero {
                    worker.afterPause { _ in if context.channel.isActive { self.send(context: context) } }
                } else {
                    self.send(context: context)
                }
            } else {
                self.ended = true
                context.close(promise: nil)
                worker.finish()
            }
        case .perRequest:
            self.ended = true
            let session =
                worker.plan.resume
                ? (try? context.pipeline.syncOperations.handler(type: TLSHandler.self))?.session : nil
            context.close(promise: nil)
            worker.connectionEnded(session: session)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard !self.ended else { return }
        self.ended = true
        self.timeout?.cancel()
        context.close(promise: nil)
        if self.waiting && self.matched == 0 && Self.serverWentAway(error) {
            self.worker.resend()
        } else if !self.waiting && Self.serverWentAway(error) {
            self.worker.reconnect()
        } else {
            self.worker.count(error is TLSError ? .tls : .closedEarly, error)
            self.worker.connectionEnded(session: nil)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.timeout?.cancel()
        if !self.ended {
            self.ended = true
            if !self.waiting {
                self.worker.reconnect()
            } else if self.matched == 0 {
                self.worker.resend()  // closed before the reply began: nothing of it was lost
            } else {
                self.worker.count(.closedEarly)  // a reply cut off part-way
                self.worker.connectionEnded(session: nil)
            }
        }
        context.fireChannelInactive()
    }

    /// A reset, or a TLS peer gone without close_notify: the server (or the balancer's backend) went away.
    private static func serverWentAway(_ error: any Error) -> Bool {
        if let error = error as? IOError { return error.errnoCode == ECONNRESET || error.errnoCode == EPIPE }
        if let error = error as? TLSError { return error.kind == .uncleanShutdown }
        return false
    }
}

/// A monotonic clock in nanoseconds, cheap enough to read twice per request.
enum MonotonicClock {
    static func now() -> UInt64 {
        var spec = timespec()
        clock_gettime(CLOCK_MONOTONIC, &spec)
        return UInt64(spec.tv_sec) * 1_000_000_000 + UInt64(spec.tv_nsec)
    }
}
