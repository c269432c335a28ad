import LengthEchoCore
import NIOCore

/// The protocol stage's deadlines, checked by its loop's sweep (see `LengthEchoServerHandler`).
extension LengthEchoServerHandler {
    /// Called by the loop's sweep: closes the connection once one of its deadlines has passed.
    func checkDeadlines(now: NIODeadline, context: ChannelHandlerContext) {
        switch self.state {
        case .serving:
            if let stalled = self.stalledSince {
                if now >= stalled + self.idleTimeout {
                    self.abort(context: context, reason: self.notReading, end: .notReading)
                }
            } else if let started = self.messageStarted {
                if now >= started + self.messageTimeout {
                    self.reject(
                        context: context,
                        reason:
                            "timed out: the message was not finished within \(formatSeconds(self.messageTimeout.seconds)) s "
                            + "(the message timeout)",
                        end: .messageTimeout
                    )
                } else if now >= self.lastActivity + self.idleTimeout {
                    self.reject(
                        context: context,
                        reason:
                            "timed out: nothing arrived for \(formatSeconds(self.idleTimeout.seconds)) s in the middle of a "
                            + "message (the idle timeout)",
                        end: .idleMidMessage
                    )
                }
            } else if self.draining && now >= self.lastActivity + Self.drainGrace {
                self.record.end(.drained)
                self.closeAfterReplies(context: context)
            } else if now >= self.lastActivity + self.idleTimeout {
                self.record.end(.idle)
                self.closeAfterReplies(context: context)
            }
        case .closing(let since):
            if now >= since + self.idleTimeout {
                self.abort(context: context, reason: self.notReading, end: .notReading)
            }
        case .rejecting:
            break  // the linger timer closes it
        }
    }

    /// Why a connection whose peer stopped taking its replies is closed.
    private var notReading: String { "the peer took no replies for \(formatSeconds(self.idleTimeout.seconds)) s" }
}
