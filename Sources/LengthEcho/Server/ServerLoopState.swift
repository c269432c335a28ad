import LengthEchoCore
import Logging
import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// What the connections of one event loop share: scratch buffers, the refusals written to a peer that
/// cannot be served, and one sweep of deadlines instead of a timer per connection. (Cancelling one of NIO's
/// scheduled tasks scans the loop's whole task queue, so a timer per connection would make every close cost
/// O(connections).)
final class ServerLoopState {
    let buffers = LoopBuffers()
    /// Lines about this loop's connections per second (a flood must not become a flood of log lines).
    let logBudget = LogBudget()
    /// The answer to a plaintext client on a TLS port, in the protocol's own error form.
    let plaintextRefusal: ByteBuffer
    /// The answer to a connection over the connection cap.
    private(set) var busyRefusal: ByteBuffer
    /// The answer to a connection from an address that has its maximum open.
    private(set) var perAddressRefusal: ByteBuffer
    /// The configuration new connections of this loop get (a reload replaces it).
    private(set) var configuration: ServerConfiguration
    /// This loop's served connections and their records, from admission to close. The loop tells them of its
    /// sweep and drain through their pipelines (`LoopEvent`, `ChannelShouldQuiesceEvent`).
    private var connections: [ObjectIdentifier: (channel: any Channel, record: ConnectionRecord)] = [:]
    /// The server's metrics (shared by every loop; published from the loops' totals).
    let metrics: ServerMetrics
    private let logger: Logger
    private let connectionLog: (@Sendable (ConnectionSummary) -> Void)?
    /// What this loop's connections that ended amount to.
    private var ended = ConnectionTotals()
    private var sweep: Scheduled<Void>?
    /// The most connections this loop held since memory was last given back.
    private var peak = 0
    /// Set once the server drains: completed when the last connection of this loop is gone.
    private var drained: EventLoopPromise<Void>?
    let loop: any EventLoop
    private var interval: TimeAmount

    init(loop: any EventLoop, configuration: ServerConfiguration, metrics: ServerMetrics) {
        self.loop = loop
        self.metrics = metrics
        self.logger = configuration.logger
        self.connectionLog = configuration.connectionLog
        self.configuration = configuration
        self.plaintextRefusal = Reply.error(
            "this port speaks TLS; connect with a TLS client", framing: configuration.framing)
        (self.interval, self.perAddressRefusal, self.busyRefusal) = Self.derived(from: configuration)
    }

    /// What follows from the configuration's limits: the sweep's interval (deadlines are found within a quarter of
    /// the shortest timeout, at most a second late) and the busy lines, which name the limits.
    private static func derived(
        from configuration: ServerConfiguration
    ) -> (interval: TimeAmount, perAddress: ByteBuffer, busy: ByteBuffer) {
        let shortest = min(configuration.idleTimeout.nanoseconds, configuration.messageTimeout.nanoseconds)
        return (
            .nanoseconds(min(max(shortest / 4, 10_000_000), 1_000_000_000)),
            Reply.error(
                "server busy: \(configuration.maximumConnectionsPerAddress ?? 0) connections from your address are open, the limit; try again later",
                framing: configuration.framing
            ),
            Reply.error(
                "server busy: \(configuration.maximumConnections) connections are open, the limit; try again later",
                framing: configuration.framing
            )
        )
    }

    /// A reload: connections accepted from now on get `configuration`; those open keep theirs.
    func apply(_ configuration: ServerConfiguration) {
        self.configuration = configuration
        (self.interval, self.perAddressRefusal, self.busyRefusal) = Self.derived(from: configuration)
    }

    /// An admitted connection's protocol stage is in place: the sweep and the drain reach it from now on.
    func serve(_ channel: any Channel, record: ConnectionRecord) {
        self.connections[ObjectIdentifier(channel)] = (channel, record)
        self.peak = max(self.peak, self.connections.count)
        if self.sweep == nil { self.scheduleSweep() }
        // Accepted while the server drains (it was in flight when the listeners closed): served like the rest.
        if self.drained != nil {
            channel.pipeline.syncOperations.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
        }
    }

    /// The one place a connection's end is accounted for, whatever ended it: what it held is released, its line
    /// is logged, its counts join the loop's totals and the metrics.
    func connectionClosed(_ channel: any Channel, record: ConnectionRecord) {
        record.ticket?.release()
        record.ticket = nil
        if self.connections.removeValue(forKey: ObjectIdentifier(channel)) != nil, self.connections.isEmpty {
            self.drained?.succeed()
        }
        let now = NIODeadline.now()
        record.log(to: self.logger, sink: self.connectionLog, now: now)
        self.ended.add(record)
        self.metrics.connectionSeconds.recordNanoseconds((now - record.started).nanoseconds)
        if let handshake = record.handshakeDuration {
            self.metrics.handshakeSeconds.recordNanoseconds(handshake.nanoseconds)
        }
    }

    /// How many connections this loop has taken: those that ended and those open.
    var accepted: Int { self.ended.accepted + self.connections.count }

    /// This loop's totals: the connections that ended, and those still open as they stand now.
    func totals() -> ConnectionTotals {
        var totals = self.ended
        for entry in self.connections.values { totals.add(entry.record) }
        return totals
    }

    /// Tells every connection of this loop to drain. The future completes once every connection of this loop,
    /// including any accepted from now on, is gone.
    func drain() -> EventLoopFuture<Void> {
        if let drained = self.drained { return drained.futureResult }
        let drained = self.loop.makePromise(of: Void.self)
        self.drained = drained
        self.tell(ChannelShouldQuiesceEvent())
        // From now on the sweep runs often enough to close each connection soon after its grace.
        self.sweep?.cancel()
        self.scheduleSweep()
        if self.connections.isEmpty { drained.succeed() }
        return drained.futureResult
    }

    /// The drain timeout passed: whatever is still open closes now.
    func closeAll() {
        self.tell(LoopEvent.drainTimedOut)
    }

    private func tell(_ event: Any) {
        for entry in Array(self.connections.values) {
            entry.channel.pipeline.syncOperations.fireUserInboundEventTriggered(event)
        }
    }

    private func scheduleSweep() {
        let interval = self.drained != nil ? min(self.interval, .milliseconds(50)) : self.interval
        self.sweep = self.loop.assumeIsolated().scheduleTask(in: interval) {
            self.sweep = nil
            self.tell(LoopEvent.tick(.now()))
            self.giveBackMemoryAfterAFlood()
            if !self.connections.isEmpty { self.scheduleSweep() }
        }
    }

    /// After a flood (thousands of connections, most of them gone), hands the freed memory back to the system:
    /// glibc keeps it in its arenas otherwise, and the process stays as large as the flood made it.
    private func giveBackMemoryAfterAFlood() {
        guard self.peak >= 1000, self.connections.count < self.peak / 4 else { return }
        self.peak = self.connections.count
        Memory.giveBack()
    }
}

/// The process's heap.
enum Memory {
    /// Hands memory freed after a flood back to the system: glibc keeps it in its arenas otherwise, and the
    /// process stays as large as the flood made it.
    static func giveBack() {
        _ = Self.mallocTrim?(0)
    }

    /// glibc's `malloc_trim`, which Swift's Glibc module does not export; nil where there is none.
    private static let mallocTrim: (@convention(c) (Int) -> Int32)? = {
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "malloc_trim") else { return nil }
        return unsafeBitCast(symbol, to: (@convention(c) (Int) -> Int32).self)
    }()
}
