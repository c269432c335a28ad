import Synchronization

/// How many connections are open, so the server can cap them.
///
/// Two atomics (the count, and the cap a reload may change), no lock and no per-connection bookkeeping here: each event loop's `ServerLoopState`
/// knows its own connections, which is all a drain needs (a connection accepted during a drain is served).
final class ConnectionTracker: Sendable {
    private let maximum: Atomic<Int>
    private let open = Atomic<Int>(0)

    init(limit: Int) {
        self.maximum = Atomic(limit)
    }

    /// The cap; a reload may change it (connections over a lowered cap stay open).
    var limit: Int {
        get { self.maximum.load(ordering: .relaxed) }
        set { self.maximum.store(newValue, ordering: .relaxed) }
    }

    /// Counts a new connection and returns true, or returns false when the server is full.
    func admit() -> Bool {
        let (_, now) = self.open.add(1, ordering: .relaxed)
        if now > self.maximum.load(ordering: .relaxed) {
            self.open.subtract(1, ordering: .relaxed)
            return false
        }
        return true
    }

    /// Called once for every admitted connection when it ends.
    func release() {
        self.open.subtract(1, ordering: .relaxed)
    }

    var count: Int { self.open.load(ordering: .relaxed) }
}
