import LengthEchoCore
import Logging
import NIOCore

/// One connection's side of the protocol: the tutorial's `read()` and `write()`, made real.
///
/// Bytes are framed by the configured terminator (NUL, or newline), not by `read()`, so messages may be
/// split or joined any way TCP likes. Each complete message is answered in order; the replies of one read burst go out in one write, flushed when
/// the burst ends. The connection stays open for the next message until the client closes it, so clients
/// may pipeline. Slow readers are handled by backpressure: while the socket cannot take more replies, the
/// handler stops reading.
final class LengthEchoServerHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private enum State {
        /// Reading messages and answering them.
        case serving
        /// The last replies are being written; the connection closes once they are out.
        case closing
        /// An error reply was sent and the write side shut; further input is discarded until close.
        case rejecting
    }

    /// Replies are flushed early when a burst of pipelined messages produces this many bytes.
    private static let batchLimit = 64 * 1024
    /// Messages at least this long are echoed without being copied into the reply buffer.
    private static let zeroCopyThreshold = 16 * 1024
    /// After an error reply, how long input is discarded so the client can read the error.
    private static let lingerTime: TimeAmount = .seconds(2)

    private let framing: Framing
    /// Who is on the other end, as the stages before this one established it.
    private let peer: ConnectionPeer
    private var state = State.serving
    /// What has arrived and is not yet a whole message (nothing, between messages).
    private var framer: MessageFramer
    /// Replies produced in the current read burst, written when it ends.
    private var replies: ByteBuffer
    private let empty: ByteBuffer
    private let idleTimeout: TimeAmount
    private var lastActivity = NIODeadline.now()
    private var watched = false
    private var lingerTimer: Scheduled<Void>?
    private var readHeld = false
    private var draining = false
    private let onMessage: (@Sendable (ByteBuffer) -> Void)?
    private let logger: Logger
    private let loopState: ServerLoopState
    private let tracker: ConnectionTracker

    init(
        configuration: ServerConfiguration,
        loopState: ServerLoopState,
        tracker: ConnectionTracker,
        peer: ConnectionPeer
    ) {
        self.loopState = loopState
        self.tracker = tracker
        self.peer = peer
        self.framing = configuration.framing
        self.empty = loopState.buffers.empty
        self.framer = MessageFramer(
            framing: configuration.framing,
            maximumMessageLength: configuration.maximumMessageLength,
            empty: self.empty
        )
        self.replies = self.empty
        self.idleTimeout = configuration.idleTimeout
        self.onMessage = configuration.onMessage
        self.logger = configuration.logger
    }

    // MARK: accept: the connection starts

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { self.startWatching(context: context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        self.startWatching(context: context)
        context.fireChannelActive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.stopWatching()
        self.tracker.release()
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.stopWatching()
        self.lingerTimer?.cancel()
        self.lingerTimer = nil
        self.framer.discard()
        context.fireChannelInactive()
    }

    // MARK: read: frame and answer

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .serving = self.state else { return }  // rejecting or closing: input is discarded
        self.lastActivity = .now()
        self.framer.append(self.unwrapInboundIn(data))
        while true {
            let message: ByteBuffer?
            do {
                message = try self.framer.next()
            } catch {
                self.reject(context: context, reason: error.description)
                return
            }
            guard let message else { break }
            self.answer(message, context: context)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if case .serving = self.state {
            if self.draining && self.framer.bufferedBytes == 0 {
                self.closeAfterReplies(context: context)
            } else {
                self.flushReplies(context: context)
            }
        }
        context.fireChannelReadComplete()
    }

    private func answer(_ message: ByteBuffer, context: ChannelHandlerContext) {
        self.onMessage?(message)
        if message.readableBytes >= Self.zeroCopyThreshold {
            // Large: write the head, then the message's own bytes (a slice of what was read), then the
            // terminator with the next batch. No copy of the message.
            Reply.writeHeader(ofMessageLength: message.readableBytes, into: &self.replies)
            let head = self.replies
            self.replies = self.empty
            context.write(self.wrapOutboundOut(head), promise: nil)
            context.write(self.wrapOutboundOut(message), promise: nil)
            self.replies.writeInteger(self.framing.terminator)
            return
        }
        if self.replies.capacity == 0 {
            self.replies = self.loopState.buffers.replies.take(
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
        self.replies = self.empty
        context.writeAndFlush(self.wrapOutboundOut(out), promise: nil)
        self.loopState.buffers.replies.giveBack(out)
    }

    func read(context: ChannelHandlerContext) {
        // While the peer is not reading its replies, stop reading its messages.
        guard context.channel.isWritable else {
            self.readHeld = true
            return
        }
        context.read()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable && self.readHeld {
            self.readHeld = false
            self.lastActivity = .now()
            context.read()
        }
        context.fireChannelWritabilityChanged()
    }

    // MARK: close

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            self.peerFinishedSending(context: context)
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    /// The server is shutting down: answer what has arrived, then close; idle connections close now.
    func drain(context: ChannelHandlerContext) {
        self.draining = true
        if case .serving = self.state, self.framer.bufferedBytes == 0 {
            self.closeAfterReplies(context: context)
        }
    }

    /// The client half-closed: what is left unterminated is its last message. Answer, then close.
    private func peerFinishedSending(context: ChannelHandlerContext) {
        switch self.state {
        case .serving:
            do {
                if let message = try self.framer.finish() {
                    self.answer(message, context: context)
                }
            } catch {
                self.reject(context: context, reason: error.description)
                return
            }
            self.closeAfterReplies(context: context)
        case .rejecting:
            context.close(promise: nil)
        case .closing:
            break
        }
    }

    /// Writes what replies are left and closes once they are on the wire.
    private func closeAfterReplies(context: ChannelHandlerContext) {
        self.state = .closing
        let out = self.replies
        self.replies = self.empty
        let written = context.eventLoop.makePromise(of: Void.self)
        context.writeAndFlush(self.wrapOutboundOut(out), promise: written)
        written.futureResult.assumeIsolated().whenComplete { _ in
            context.close(promise: nil)
        }
    }

    /// Answers `error: <reason>` and closes so that the error arrives even while the client is still
    /// sending: shut our write side, discard input for a while, then close.
    private func reject(context: ChannelHandlerContext, reason: String) {
        self.state = .rejecting
        self.framer.discard()
        self.logger.notice(
            "closing connection: \(reason)",
            metadata: self.logMetadata
        )
        Reply.write(error: reason, framing: self.framing, into: &self.replies)
        let out = self.replies
        self.replies = self.empty
        context.write(self.wrapOutboundOut(out), promise: nil)
        self.lingerTimer = context.shutOutputThenClose(after: Self.lingerTime)
        if self.readHeld {
            self.readHeld = false
            context.read()
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.logger.info("connection error: \(error)", metadata: self.logMetadata)
        context.close(promise: nil)
    }

    private var logMetadata: Logger.Metadata {
        self.peer.metadata.mapValues { .string($0) }
    }

    // MARK: timeouts

    private func startWatching(context: ChannelHandlerContext) {
        guard !self.watched else { return }
        self.watched = true
        self.lastActivity = .now()
        self.loopState.watch(self, context: context)
    }

    private func stopWatching() {
        guard self.watched else { return }
        self.watched = false
        self.loopState.forget(self)
    }

    /// Called by the loop's idle sweep: acts once nothing has arrived for the idle timeout.
    func checkIdle(now: NIODeadline, context: ChannelHandlerContext) {
        guard case .serving = self.state, now >= self.lastActivity + self.idleTimeout else { return }
        self.stopWatching()
        let seconds = formatSeconds(self.idleTimeout.seconds)
        if self.framer.bufferedBytes > 0 {
            self.reject(
                context: context,
                reason: "timed out: the message was not finished within \(seconds) s"
            )
        } else {
            self.logger.debug("closing idle connection after \(seconds) s")
            self.closeAfterReplies(context: context)
        }
    }
}

/// Answers a connection over the server's limit with one error line, then closes it.
final class BusyRejectHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let refusal: ByteBuffer

    init(refusal: ByteBuffer) {
        self.refusal = refusal
    }

    func channelActive(context: ChannelHandlerContext) {
        let written = context.eventLoop.makePromise(of: Void.self)
        context.writeAndFlush(self.wrapOutboundOut(self.refusal), promise: written)
        written.futureResult.assumeIsolated().whenComplete { _ in context.close(promise: nil) }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {}
}
