import LengthEchoCore
import NIOCore
import Synchronization

/// Limits per client address, shared by every event loop: open connections per address, and a token bucket
/// of TLS handshakes per address. Sharded by address so that loops rarely wait on one another; one short
/// lock per connection, none per message.
final class AddressLimits: Sendable {
    private struct Entry {
        var open = 0
        /// Handshake tokens left, and when they were last counted.
        var tokens: Double
        var refilled: NIODeadline
        /// When a refusal by the rate was last logged for this address.
        var logged: NIODeadline?
    }

    private struct Table {
        var entries: [AddressKey: Entry] = [:]
        /// The size at which addresses that hold nothing are next forgotten: doubled past what a sweep keeps,
        /// so sweeping costs O(1) per connection however many addresses are active.
        var sweepAt = 4096

        /// Forgets addresses with nothing open whose bucket is full again (bounded memory under connections
        /// from many addresses), once the table has grown to `sweepAt`.
        mutating func sweepIfLarge(now: NIODeadline) {
            guard self.entries.count >= self.sweepAt else { return }
            self.entries = self.entries.filter { $0.value.open > 0 || now - $0.value.refilled < .seconds(2) }
            self.sweepAt = max(4096, 2 * self.entries.count)
        }
    }

    private final class Shard: Sendable {
        let table = Mutex(Table())
    }

    private static let shards = 16
    private let shards: [Shard]
    /// The limits, 0 for none; a reload may change them (for the connections after it).
    private let openLimit: Atomic<Int>
    private let rateLimit: Atomic<Int>

    var maximumOpen: Int? {
        get { self.openLimit.load(ordering: .relaxed).nonZero }
        set { self.openLimit.store(newValue ?? 0, ordering: .relaxed) }
    }
    var handshakesPerSecond: Int? {
        get { self.rateLimit.load(ordering: .relaxed).nonZero }
        set { self.rateLimit.store(newValue ?? 0, ordering: .relaxed) }
    }

    init(maximumOpen: Int?, handshakesPerSecond: Int?) {
        self.openLimit = Atomic(maximumOpen ?? 0)
        self.rateLimit = Atomic(handshakesPerSecond ?? 0)
        self.shards = (0..<Self.shards).map { _ in Shard() }
    }

    /// How many addresses are remembered (tests).
    var count: Int { self.shards.reduce(0) { $0 + $1.table.withLock { $0.entries.count } } }

    private func shard(_ key: AddressKey) -> Shard {
        self.shards[Int(UInt(bitPattern: key.hashValue) % UInt(Self.shards))]
    }

    private var bucket: Double { Double(self.handshakesPerSecond ?? 0) }

    /// What `admit` did: counted the connection (release it when it ends), had no limit to count against, or
    /// refused it (the address has its maximum open).
    enum Admitted { case counted, unlimited, refused }

    /// Counts a connection from `key`, unless there is no limit or the address has its maximum open.
    func admit(_ key: AddressKey) -> Admitted {
        guard let maximum = self.maximumOpen else { return .unlimited }
        let bucket = self.bucket
        let now = NIODeadline.now()
        return self.shard(key).table.withLock { table in
            table.sweepIfLarge(now: now)
            var entry = table.entries[key] ?? Entry(tokens: bucket, refilled: now)
            guard entry.open < maximum else { return .refused }
            entry.open += 1
            table.entries[key] = entry
            return .counted
        }
    }

    /// A connection from `key` that `admit` counted ended (whatever the limit is now).
    func release(_ key: AddressKey) {
        self.shard(key).table.withLock { table in
            guard var entry = table.entries[key] else { return }
            entry.open -= 1
            if entry.open <= 0 && entry.tokens >= self.bucket {
                table.entries[key] = nil  // nothing left to remember
            } else {
                table.entries[key] = entry
            }
        }
    }

    /// Takes a handshake token for `key`. Returns (allowed, whether to log a refusal now: at most once a second).
    func takeHandshake(_ key: AddressKey, now: NIODeadline = .now()) -> (allowed: Bool, log: Bool) {
        guard let rate = self.handshakesPerSecond else { return (true, false) }
        let bucket = Double(rate)
        return self.shard(key).table.withLock { table in
            table.sweepIfLarge(now: now)
            var entry = table.entries[key] ?? Entry(tokens: bucket, refilled: now)
            let elapsed = Double((now - entry.refilled).nanoseconds) / 1e9
            entry.tokens = min(bucket, entry.tokens + elapsed * bucket)
            entry.refilled = now
            defer { table.entries[key] = entry }
            if entry.tokens >= 1 {
                entry.tokens -= 1
                return (true, false)
            }
            let log = entry.logged.map { now - $0 >= .seconds(1) } ?? true
            if log { entry.logged = now }
            return (false, log)
        }
    }
}

extension Int {
    /// Nil for 0 (no limit).
    fileprivate var nonZero: Int? { self == 0 ? nil : self }
}
