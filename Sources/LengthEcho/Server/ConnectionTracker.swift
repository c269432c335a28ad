import NIOCore
import Synchronization

/// The open connections, so the server can cap how many there are and drain them on shutdown.
final class ConnectionTracker: Sendable {
    private struct State {
        var channels: [ObjectIdentifier: any Channel] = [:]
        var draining = false
    }

    let limit: Int
    private let state = Mutex(State())

    init(limit: Int) {
        self.limit = limit
    }

    /// Records `channel` and returns true, or returns false when the server is full or draining.
    func admit(_ channel: any Channel) -> Bool {
        let id = ObjectIdentifier(channel)
        let admitted = self.state.withLock { state in
            guard !state.draining, state.channels.count < self.limit else { return false }
            state.channels[id] = channel
            return true
        }
        if admitted {
            channel.closeFuture.whenComplete { _ in
                _ = self.state.withLock { $0.channels.removeValue(forKey: id) }
            }
        }
        return admitted
    }

    var count: Int { self.state.withLock { $0.channels.count } }

    /// Refuses new connections from now on and returns the open ones.
    func beginDrain() -> [any Channel] {
        self.state.withLock { state in
            state.draining = true
            return Array(state.channels.values)
        }
    }
}
