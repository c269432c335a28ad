import LengthEchoCore
import NIOCore

/// What the connections of one event loop share: scratch buffers, the refusals written to a peer that
/// cannot be served, and one idle sweep instead of a timer per connection. (Cancelling one of NIO's scheduled tasks scans the loop's whole task queue, so a timer per
/// connection would make every close cost O(connections).)
final class ServerLoopState {
    let buffers = LoopBuffers()
    /// The answer to a plaintext client on a TLS port, in the protocol's own error form.
    let plaintextRefusal: ByteBuffer
    /// The answer to a connection over the connection cap.
    let busyRefusal: ByteBuffer
    private var connections: [ObjectIdentifier: (handler: LengthEchoServerHandler, context: ChannelHandlerContext)] =
        [:]
    private var sweep: Scheduled<Void>?
    private let loop: any EventLoop
    private let interval: TimeAmount

    init(loop: any EventLoop, configuration: ServerConfiguration) {
        self.loop = loop
        // Deadlines are found within a quarter of the shortest timeout (at most a second late).
        let shortest = min(configuration.idleTimeout.nanoseconds, configuration.messageTimeout.nanoseconds)
        self.interval = .nanoseconds(min(max(shortest / 4, 10_000_000), 1_000_000_000))
        self.plaintextRefusal = Reply.error(
            "this port speaks TLS; connect with a TLS client", framing: configuration.framing)
        self.busyRefusal = Reply.error(
            "server busy: \(configuration.maximumConnections) connections are open, the limit; try again later",
            framing: configuration.framing
        )
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
                entry.handler.checkDeadlines(now: now, context: entry.context)
            }
            if !self.connections.isEmpty { self.scheduleSweep() }
        }
    }
}
