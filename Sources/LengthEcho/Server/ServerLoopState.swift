import LengthEchoTLS
import NIOCore

/// What the connections of one event loop share: scratch buffers, and one idle sweep instead of a timer per
/// connection. (Cancelling one of NIO's scheduled tasks scans the loop's whole task queue, so a timer per
/// connection would make every close cost O(connections).)
final class ServerLoopState {
    let buffers = LoopBuffers()
    private var connections: [ObjectIdentifier: (handler: LengthEchoServerHandler, context: ChannelHandlerContext)] = [:]
    private var sweep: Scheduled<Void>?
    private let loop: any EventLoop
    private let interval: TimeAmount

    init(loop: any EventLoop, idleTimeout: TimeAmount) {
        self.loop = loop
        // Idle connections are found within a quarter of the timeout (at most a second late).
        self.interval = .nanoseconds(min(max(idleTimeout.nanoseconds / 4, 10_000_000), 1_000_000_000))
    }

    func watch(_ handler: LengthEchoServerHandler, context: ChannelHandlerContext) {
        self.connections[ObjectIdentifier(handler)] = (handler, context)
        if self.sweep == nil { self.scheduleSweep() }
    }

    func forget(_ handler: LengthEchoServerHandler) {
        self.connections.removeValue(forKey: ObjectIdentifier(handler))
    }

    /// Tells every connection of this loop to drain; returns their channels, to wait for them to close.
    func drain() -> [any Channel] {
        let entries = Array(self.connections.values)
        for entry in entries {
            entry.handler.drain(context: entry.context)
        }
        return entries.map { $0.context.channel }
    }

    private func scheduleSweep() {
        self.sweep = self.loop.assumeIsolated().scheduleTask(in: self.interval) {
            self.sweep = nil
            let now = NIODeadline.now()
            for entry in self.connections.values {
                entry.handler.checkIdle(now: now, context: entry.context)
            }
            if !self.connections.isEmpty { self.scheduleSweep() }
        }
    }
}
