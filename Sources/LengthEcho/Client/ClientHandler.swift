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
    /// The message followed by its NUL.
    var bytes: ByteBuffer
    var reply: EventLoopPromise<ByteBuffer>
}

/// The client's side of one connection: writes messages, and hands each reply (the bytes up to its NUL)
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
    private var received: ByteBuffer?
    private var framer: MessageFramer

    private let failure: ConnectionFailure

    init(maximumReplyLength: Int, failure: ConnectionFailure) {
        self.framer = MessageFramer(maximumMessageLength: maximumReplyLength)
        self.failure = failure
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let request = self.unwrapOutboundIn(data)
        self.waiting.append(request.reply)
        context.write(self.wrapOutboundOut(request.bytes), promise: promise)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = self.unwrapInboundIn(data)
        if var received = self.received, received.readableBytes > 0 {
            received.writeBuffer(&bytes)
            self.received = received
        } else {
            self.received = bytes
            self.framer.reset()
        }
        while var received = self.received {
            let reply: ByteBuffer?
            do {
                reply = try self.framer.nextMessage(in: &received)
            } catch {
                self.fail(
                    LengthEchoError.invalidReply("", reason: "more than \(self.framer.maximumMessageLength) bytes without a NUL"),
                    context: context
                )
                return
            }
            self.received = received
            guard let reply else { break }
            guard let waiter = self.waiting.popFirst() else {
                self.fail(
                    LengthEchoError.invalidReply(ParsedReply.describe(Array(reply.readableBytesView)), reason: "nothing was asked"),
                    context: context
                )
                return
            }
            waiter.succeed(reply)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        if let received = self.received, received.readableBytes > 0, let waiter = self.waiting.popFirst() {
            waiter.succeed(received)  // a reply ended by the server closing, as the original's may be
        }
        self.received = nil
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
