import LengthEchoCore
import NIOCore
import Synchronization

/// The first error a connection met, kept so that a later write to the dead connection reports the cause
/// (say, the TLS alert the server sent) rather than only that the connection is closed.
final class ConnectionFailure: Sendable {
    private let error = Mutex<(any Error)?>(nil)

    func record(_ error: any Error) {
        self.error.withLock { if $0 == nil { $0 = error } }
    }

    var recorded: (any Error)? { self.error.withLock { $0 } }
}

/// One message on its way out, with the promise its reply completes.
struct ClientRequest: Sendable {
    /// The message followed by its terminator.
    var bytes: ByteBuffer
    var reply: EventLoopPromise<ByteBuffer>
}

/// The client's side of one connection: writes messages, and hands each reply (the bytes up to its terminator)
/// to the request that is waiting for it, in order, so requests may be pipelined.
///
/// A reply may also end with the connection: the original C server writes its reply without a trailing
/// guarantee and closes. Requests still waiting when the connection closes fail with `closedBeforeReply`,
/// which the client answers by reconnecting.
final class LengthEchoClientHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ClientRequest
    typealias OutboundOut = ByteBuffer

    private var waiting = CircularBuffer<EventLoopPromise<ByteBuffer>>()
    /// Reply bytes received and not yet handed to a request (a reply ends with its terminator).
    private var replies: MessageFramer

    private let failure: ConnectionFailure

    init(framing: Framing, maximumReplyLength: Int, failure: ConnectionFailure) {
        self.replies = MessageFramer(framing: framing, maximumMessageLength: maximumReplyLength)
        self.failure = failure
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let request = self.unwrapOutboundIn(data)
        self.waiting.append(request.reply)
        context.write(self.wrapOutboundOut(request.bytes), promise: promise)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.replies.append(self.unwrapInboundIn(data))
        while true {
            let reply: ByteBuffer?
            do {
                reply = try self.replies.next()
            } catch {
                self.fail(
                    LengthEchoError.invalidReply(
                        "",
                        reason:
                            "more than \(self.replies.maximumMessageLength) bytes without a \(self.replies.framing.terminatorName)"
                    ),
                    context: context
                )
                return
            }
            guard let reply else { break }
            guard let waiter = self.waiting.popFirst() else {
                // An `error:` line before anything was asked is the server refusing the connection itself (a
                // busy server answers as it accepts): report it as the server's error.
                if case .error(let reason)? = try? ParsedReply(bytes: reply.readableBytesView) {
                    self.fail(LengthEchoError.serverError(reason), context: context)
                    return
                }
                self.fail(
                    LengthEchoError.invalidReply(
                        ParsedReply.describe(Array(reply.readableBytesView)), reason: "nothing was asked"),
                    context: context
                )
                return
            }
            waiter.succeed(reply)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        // A reply ended by the server closing, as the original's may be. The framer's limit was checked as
        // the bytes arrived, so this cannot throw.
        if self.replies.bufferedBytes > 0, let last = try? self.replies.finish(), let waiter = self.waiting.popFirst() {
            waiter.succeed(last)
        }
        self.replies.discard()
        let error = self.failure.recorded ?? LengthEchoError.closedBeforeReply
        while let waiter = self.waiting.popFirst() {
            waiter.fail(error)
        }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.fail(error, context: context)
    }

    private func fail(_ error: any Error, context: ChannelHandlerContext) {
        self.failure.record(error)
        while let waiter = self.waiting.popFirst() {
            waiter.fail(error)
        }
        context.close(promise: nil)
    }
}
