import LengthEchoCore
import LengthEchoTLS
import Logging
import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// One connection's side of the protocol: the tutorial's `read()` and `write()`, made real.
///
/// Bytes are framed by the configured terminator (NUL, or newline), not by `read()`, so messages may be
/// split or joined any way TCP likes. Each complete message is answered in order; the replies of one read burst go out in one write, flushed when
/// the burst ends. The connection stays open for the next message until the client closes it, so clients
/// may pipeline. Slow readers are handled by backpressure: while the socket cannot take more replies, the
/// handler stops reading.
///
/// Every way a connection can last has a deadline, checked by its loop's sweep (at most a second late):
/// silence between messages (the idle timeout), a message that takes too long however steadily it trickles
/// (the message timeout), silence in the middle of a message (the idle timeout, with an error line), a peer
/// that stops taking its replies (the idle timeout, then closed without a word), and the last replies of a
/// closing connection (the idle timeout, then closed). A connection stays in the sweep until it is gone.
final class LengthEchoServerHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    enum State {
        /// Reading messages and answering them.
        case serving
        /// The last replies are being written (since then); the connection closes once they are out.
        case closing(since: NIODeadline)
        /// An error reply was sent and the write side shut; further input is discarded until close.
        case rejecting
    }

    /// Replies are flushed early when a burst of pipelined messages produces this many bytes.
    private static let batchLimit = 64 * 1024
    /// Messages at least this long are echoed without being copied into the reply buffer.
    private static let zeroCopyThreshold = 16 * 1024
    /// After an error reply, how long input is discarded so the client can read the error.
    private static let lingerTime: TimeAmount = .seconds(2)
    /// During a drain, how long a connection that was just accepted, or just answered, gets to send its next
    /// message (and to finish its TLS handshake) before it is closed.
    static let drainGrace: TimeAmount = .seconds(1)

    private let framing: Framing
    /// Whether TLS runs below this stage (else a ClientHello arriving is a TLS client on the plaintext port).
    private let behindTLS: Bool
    /// Who is on the other end, as the stages before this one established it, and what the connection line
    /// will say: this stage counts messages and bytes and says why the connection ended.
    let record: ConnectionRecord
    private(set) var state = State.serving
    /// What has arrived and is not yet a whole message (nothing, between messages).
    private var framer: MessageFramer
    /// Replies produced in the current read burst, written when it ends.
    private var replies: ByteBuffer
    private let empty: ByteBuffer
    let idleTimeout: TimeAmount
    let messageTimeout: TimeAmount
    /// When a byte last arrived, or the peer last took replies after a stall.
    private(set) var lastActivity = NIODeadline.now()
    /// When the first byte of the message in progress arrived (nil between messages).
    private(set) var messageStarted: NIODeadline?
    /// Since when the peer has not been taking its replies (reads are held meanwhile).
    private(set) var stalledSince: NIODeadline?
    private var watched = false
    private var lingerTimer: Scheduled<Void>?
    private(set) var draining = false
    private let onMessage: (@Sendable (ByteBuffer, ConnectionPeer) -> Void)?
    private let logger: Logger
    private let loopState: ServerLoopState
    private let tracker: ConnectionTracker

    init(
        configuration: ServerConfiguration,
        loopState: ServerLoopState,
        tracker: ConnectionTracker,
        record: ConnectionRecord
    ) {
        self.loopState = loopState
        self.tracker = tracker
        self.record = record
        self.framing = configuration.framing
        self.behindTLS = configuration.tls != nil
        self.empty = loopState.buffers.empty
        self.framer = MessageFramer(
            framing: configuration.framing,
            maximumMessageLength: configuration.maximumMessageLength,
            empty: self.empty
        )
        self.replies = self.empty
        self.idleTimeout = configuration.idleTimeout
        self.messageTimeout = configuration.messageTimeout
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
        let now = NIODeadline.now()
        self.lastActivity = now
        let bytes = self.unwrapInboundIn(data)
        if self.record.bytesIn == 0 && !self.behindTLS && PeerSigns.looksLikeClientHello(bytes) {
            self.record.bytesIn += bytes.readableBytes
            self.reject(
                context: context, reason: "this port speaks plaintext, not TLS: connect without TLS", end: .notPlaintext
            )
            return
        }
        self.record.bytesIn += bytes.readableBytes
        self.framer.append(bytes)
        var answered = false
        while true {
            let message: ByteBuffer?
            do {
                message = try self.framer.next()
            } catch {
                self.reject(context: context, reason: error.description, end: .tooLarge)
                return
            }
            guard let message else { break }
            answered = true
            self.answer(message, context: context)
        }
        // What is left began with this read, unless it is the rest of a message begun earlier.
        if self.framer.bufferedBytes == 0 {
            self.messageStarted = nil
        } else if answered || self.messageStarted == nil {
            self.messageStarted = now
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if case .serving = self.state {
            if self.draining && self.framer.bufferedBytes == 0 && self.replies.readableBytes > 0 {
                // Draining: this burst's replies are the connection's last.
                self.record.end(.drained)
                self.closeAfterReplies(context: context)
            } else {
                self.flushReplies(context: context)
            }
        }
        context.fireChannelReadComplete()
    }

    private func answer(_ message: ByteBuffer, context: ChannelHandlerContext) {
        self.onMessage?(message, self.record.peer)
        self.record.messages += 1
        self.record.bytesOut += Reply.encodedLength(ofMessageLength: message.readableBytes)
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
        // While the peer is not reading its replies, stop reading its messages (and start its stall clock).
        guard context.channel.isWritable else {
            if self.stalledSince == nil { self.stalledSince = .now() }
            return
        }
        context.read()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable, self.stalledSince != nil {
            self.stalledSince = nil
            self.lastActivity = .now()
            context.read()
        }
        context.fireChannelWritabilityChanged()
    }

    // MARK: close

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            self.peerFinishedSending(context: context)
        } else if let event = event as? TLSEvent {
            switch event {
            case .handshakeCompleted(let info):
                // A finished handshake is the peer's doing too: its first message follows.
                self.lastActivity = .now()
                self.record.tls = info
                self.loopState.metrics.handshakeSeconds.recordNanoseconds(
                    (self.lastActivity - self.record.started).nanoseconds)
            case .handshakeFailed(let error):
                let end: ConnectionEnd =
                    switch error.kind {
                    case .handshakeTimeout: .handshakeTimeout
                    case .peerNotTLS: .notTLS
                    default: .handshakeFailed
                    }
                self.record.end(end, detail: error.description)
            }
            context.fireUserInboundEventTriggered(event)
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    /// The server is shutting down. An idle connection closes now. One that is in the middle of a message
    /// gets it answered, then closes; one accepted or answered within the drain grace gets that long to send
    /// its next message (it may be on its way), which is answered, then it closes. The sweep closes the rest.
    func drain(now: NIODeadline, context: ChannelHandlerContext) {
        self.draining = true
        if case .serving = self.state, self.messageStarted == nil, now >= self.lastActivity + Self.drainGrace {
            self.record.end(.drained)
            self.closeAfterReplies(context: context)
        }
    }

    /// The drain timeout ran out with this connection still open.
    func closeAtDrainTimeout(context: ChannelHandlerContext) {
        self.record.end(.drainTimeout)
        context.close(promise: nil)
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
                self.reject(context: context, reason: error.description, end: .tooLarge)
                return
            }
            self.record.end(.clientClosed)
            self.closeAfterReplies(context: context)
        case .rejecting:
            context.close(promise: nil)
        case .closing:
            self.record.end(.clientClosed)
        }
    }

    /// Writes what replies are left and closes once they are on the wire.
    func closeAfterReplies(context: ChannelHandlerContext) {
        self.state = .closing(since: .now())
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
    func reject(context: ChannelHandlerContext, reason: String, end: ConnectionEnd) {
        self.record.end(end, detail: reason)
        self.state = .rejecting
        self.framer.discard()
        self.log(.notice, "closing connection: \(reason)")
        let before = self.replies.readableBytes
        Reply.write(error: reason, framing: self.framing, into: &self.replies)
        self.record.bytesOut += self.replies.readableBytes - before
        let out = self.replies
        self.replies = self.empty
        context.write(self.wrapOutboundOut(out), promise: nil)
        self.lingerTimer = context.shutOutputThenClose(after: Self.lingerTime)
        if self.stalledSince != nil {
            self.stalledSince = nil
            context.read()  // input is discarded from now on, so it may flow again
        }
    }

    /// Closes at once, without a word: the peer cannot or will not take one.
    func abort(context: ChannelHandlerContext, reason: String, end: ConnectionEnd) {
        self.record.end(end, detail: reason)
        self.log(.notice, "closing connection: \(reason)")
        self.framer.discard()
        context.close(promise: nil)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // A peer that resets or vanishes is routine: not worth an info line each (its connection line says it).
        let routine = PeerSigns.isRoutine(error)
        self.record.end(routine ? .reset : .error, detail: "\(error)")
        self.log(routine ? .debug : .info, "connection error: \(error)")
        context.close(promise: nil)
    }

    /// One line about this connection, within the loop's budget of lines per second.
    private func log(_ level: Logger.Level, _ message: @autoclosure () -> Logger.Message) {
        guard self.logger.logLevel <= level else { return }
        guard self.loopState.logBudget.allow(logger: self.logger) else { return }
        self.logger.log(level: level, message(), metadata: self.record.peer.loggerMetadata)
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
}
