import LengthEchoCore
import LengthEchoTLS
import NIOCore

/// What a server loop tells each of its connections, through the connection's pipeline.
enum LoopEvent {
    /// The sweep: check the connection's deadlines.
    case tick(NIODeadline)
    /// The drain timeout ran out: close now.
    case drainTimedOut
}

/// One connection's side of the protocol: the tutorial's `read()` and `write()`, made real.
///
/// The rules (framing, deadlines, backpressure, drain, how a connection ends) are `ConnectionStateMachine`'s;
/// this handler feeds it what happens, with the time, and carries out what it answers. Replies are built here:
/// each complete message is answered in order; the replies of one read burst go out in one write, flushed when
/// the burst ends, so clients may pipeline. It counts messages and bytes in the connection's record and says why
/// the connection ended there; the record is logged and counted once, when the channel closes
/// (`ServerLoopState.connectionClosed`).
///
/// Events it takes: the loop's sweep and drain timeout (`LoopEvent`), the drain (`ChannelShouldQuiesceEvent`),
/// the peer's half-close (`ChannelEvent.inputClosed`) and the TLS handshake's outcome (`TLSEvent`).
final class LengthEchoServerHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// Replies are flushed early when a burst of pipelined messages produces this many bytes.
    private static let batchLimit = 64 * 1024
    /// Messages at least this long are echoed without being copied into the reply buffer.
    private static let zeroCopyThreshold = 16 * 1024
    /// After an error reply, how long input is discarded so the client can read the error.
    private static let lingerTime: TimeAmount = .seconds(2)

    // The two are touched on every read and message, on the loop only, and each access ends before any I/O that
    // could re-enter the handler: the run-time exclusivity checks (a call per access) are left out.
    @exclusivity(unchecked) private(set) var machine: ConnectionStateMachine
    private let framing: Framing
    /// Who is on the other end and what the connection line will say.
    let record: ConnectionRecord
    /// Replies produced in the current read burst, written when it ends.
    @exclusivity(unchecked) private var replies: ByteBuffer
    private let buffers: LoopBuffers
    private var lingerTimer: Scheduled<Void>?
    private let onMessage: (@Sendable (ByteBuffer, SocketAddress?) -> Void)?

    init(configuration: ServerConfiguration, buffers: LoopBuffers, record: ConnectionRecord, now: NIODeadline) {
        self.record = record
        self.buffers = buffers
        self.framing = configuration.framing
        self.replies = buffers.empty
        self.onMessage = configuration.onMessage
        self.machine = ConnectionStateMachine(
            framing: configuration.framing,
            maximumMessageLength: configuration.maximumMessageLength,
            idleTimeout: configuration.idleTimeout,
            messageTimeout: configuration.messageTimeout,
            behindTLS: configuration.tls != nil,
            empty: buffers.empty,
            now: now
        )
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.lingerTimer?.cancel()
        self.lingerTimer = nil
        self.machine.closed()
        context.fireChannelInactive()
    }

    // MARK: read: frame and answer

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let bytes = self.unwrapInboundIn(data)
        self.record.bytesIn += bytes.readableBytes
        let action = self.machine.bytesRead(bytes, now: .now())
        guard case .none = action else { return self.carryOut(action, context: context) }
        while true {
            switch self.machine.nextMessage() {
            case .answer(let message): self.answer(message, context: context)
            case .none: return
            case .reject(let action): return self.carryOut(action, context: context)
            }
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        self.carryOut(self.machine.readComplete(repliesPending: self.replies.readableBytes > 0), context: context)
        context.fireChannelReadComplete()
    }

    private func answer(_ message: ByteBuffer, context: ChannelHandlerContext) {
        self.onMessage?(message, self.record.peer.address)
        self.record.messages += 1
        self.record.bytesOut += Reply.encodedLength(ofMessageLength: message.readableBytes)
        if message.readableBytes >= Self.zeroCopyThreshold {
            // Large: write the head, then the message's own bytes (a slice of what was read), then the
            // terminator with the next batch. No copy of the message.
            Reply.writeHeader(ofMessageLength: message.readableBytes, into: &self.replies)
            let head = self.replies
            self.replies = self.buffers.empty
            context.write(self.wrapOutboundOut(head), promise: nil)
            context.write(self.wrapOutboundOut(message), promise: nil)
            self.replies.writeInteger(self.framing.terminator)
            return
        }
        if self.replies.capacity == 0 {
            self.replies = self.buffers.replies.take(
                capacity: Reply.encodedLength(ofMessageLength: message.readableBytes))
        }
        Reply.write(echoOf: message, framing: self.framing, into: &self.replies)
        if self.replies.readableBytes >= Self.batchLimit {
            self.flushReplies(context: context)
        }
    }

    // MARK: write: replies and backpressure

    private func flushReplies(context: ChannelHandlerContext) {
        guard self.replies.readableBytes > 0 else { return }
        let out = self.replies
        self.replies = self.buffers.empty
        context.writeAndFlush(self.wrapOutboundOut(out), promise: nil)
        self.buffers.replies.giveBack(out)
    }

    func read(context: ChannelHandlerContext) {
        let writable = context.channel.isWritable
        self.carryOut(self.machine.readRequested(writable: writable, now: .now()), context: context)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        let writable = context.channel.isWritable
        if writable { self.carryOut(self.machine.writabilityChanged(writable: true, now: .now()), context: context) }
        context.fireChannelWritabilityChanged()
    }

    // MARK: events

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        // The most frequent first (each case is a dynamic cast): every connection's half-close, every TLS
        // connection's handshake, then the loop's sweep and drain.
        switch event {
        case let event as ChannelEvent where event == .inputClosed:
            let (last, then) = self.machine.inputClosed(now: .now())
            if let last { self.answer(last, context: context) }
            self.carryOut(then, context: context)
        case let event as TLSEvent:
            switch event {
            case .handshakeCompleted(let info):
                let now = NIODeadline.now()
                self.machine.handshakeCompleted(now: now)
                self.record.handshakeCompleted(info, at: now)
            case .handshakeFailed(let error):
                self.record.end(ConnectionEnd(handshakeFailure: error), detail: error.description)
            }
        case let event as LoopEvent:
            switch event {
            case .tick(let now): self.carryOut(self.machine.tick(now: now), context: context)
            case .drainTimedOut: self.carryOut(self.machine.drainTimedOut(), context: context)
            }
            return  // the loop's own: no stage above needs it
        case is ChannelShouldQuiesceEvent:
            self.carryOut(self.machine.drain(now: .now()), context: context)
            return
        default:
            break
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // A peer that resets or vanishes is routine; its connection line says so.
        self.record.end(PeerSigns.isRoutine(error) ? .reset : .error, detail: "\(error)")
        self.machine.closed()
        context.close(promise: nil)
    }

    // MARK: actions

    private func carryOut(_ action: ConnectionStateMachine.Action, context: ChannelHandlerContext) {
        switch action {
        case .none:
            break
        case .read:
            context.read()
        case .flush:
            self.flushReplies(context: context)
        case .closeAfterReplies(let end):
            self.record.end(end)
            let out = self.replies
            self.replies = self.buffers.empty
            let written = context.eventLoop.makePromise(of: Void.self)
            context.writeAndFlush(self.wrapOutboundOut(out), promise: written)
            written.futureResult.assumeIsolated().whenComplete { _ in context.close(promise: nil) }
        case .reject(let end, let reason, let resumeReading):
            // The error goes out even while the client is still sending: shut our write side, discard input
            // for a while, then close.
            self.record.end(end, detail: reason)
            let before = self.replies.readableBytes
            Reply.write(error: reason, framing: self.framing, into: &self.replies)
            self.record.bytesOut += self.replies.readableBytes - before
            let out = self.replies
            self.replies = self.buffers.empty
            context.write(self.wrapOutboundOut(out), promise: nil)
            self.lingerTimer = context.shutOutputThenClose(after: Self.lingerTime)
            if resumeReading { context.read() }
        case .abort(let end, let reason):
            self.record.end(end, detail: reason)
            context.close(promise: nil)
        case .close(let end):
            if let end { self.record.end(end) }
            context.close(promise: nil)
        }
    }
}

extension ConnectionEnd {
    /// How a failed TLS handshake ends a connection.
    init(handshakeFailure error: TLSError) {
        if error.kind == .handshakeTimeout {
            self = .handshakeTimeout
        } else {
            self = error.cause == .peerNotTLS ? .notTLS : .handshakeFailed
        }
    }
}
