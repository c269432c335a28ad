import Logging
import NIOCore

/// Events the TLS handler sends up the pipeline.
public enum TLSEvent: Sendable {
    case handshakeCompleted(TLSConnectionInfo)
}

/// TLS as one NIO channel handler, for both roles: ciphertext below it, plaintext above it.
///
/// It drives an OpenSSL `SSL` through memory BIOs. Reads feed ciphertext in and pass up whatever plaintext
/// comes out (often none); writes made before the handshake completes are queued; each flush becomes one
/// ciphertext write. Closing sends close_notify, then waits (bounded) for the peer's. A peer that goes away
/// without close_notify is reported as an unclean shutdown, since its data may have been cut short.
public final class TLSHandler: ChannelDuplexHandler {
    public typealias InboundIn = ByteBuffer
    public typealias InboundOut = ByteBuffer
    public typealias OutboundIn = ByteBuffer
    public typealias OutboundOut = ByteBuffer

    private enum State {
        case idle
        case handshaking
        case active
        /// close_notify sent; waiting for the peer's, its EOF, or the shutdown timeout.
        case closing
        case closed
    }

    /// The first byte of every TLS handshake record.
    private static let handshakeRecord: UInt8 = 0x16
    private static let alertRecord: UInt8 = 0x15

    private let connection: TLSConnection
    private let handshakeTimeout: TimeAmount
    private let shutdownTimeout: TimeAmount
    private let logger: Logger?
    /// This event loop's reusable buffers, when the pipeline's owner provides them.
    private let buffers: LoopBuffers?
    private var state = State.idle
    private var receivedAny = false
    private var receivedCloseNotify = false
    private var sentCloseNotify = false
    /// Writes made before the handshake finished.
    private var queued: [(ByteBuffer, EventLoopPromise<Void>?)] = []
    /// Promises of plaintext writes already encrypted, completed by the next ciphertext write.
    private var encrypted: [EventLoopPromise<Void>] = []
    private var handshakePromise: EventLoopPromise<TLSConnectionInfo>?
    private var closePromise: EventLoopPromise<Void>?
    private var timer: Scheduled<Void>?
    /// Why the connection failed, for writes that arrive afterwards.
    private var failure: TLSError?

    /// - Parameters:
    ///   - expectedHost: client role: the name or address connected to, sent as SNI (names only) and verified.
    ///   - handshakeCompleted: completed with what the handshake agreed on, or failed with why it failed.
    public init(
        context: TLSContext,
        expectedHost: String? = nil,
        handshakeTimeout: TimeAmount = .seconds(10),
        shutdownTimeout: TimeAmount = .seconds(3),
        handshakeCompleted: EventLoopPromise<TLSConnectionInfo>? = nil,
        resuming session: TLSSession? = nil,
        buffers: LoopBuffers? = nil,
        logger: Logger? = nil
    ) throws(TLSError) {
        self.buffers = buffers
        self.connection = try TLSConnection(context: context, expectedHost: expectedHost, session: session)
        self.handshakeTimeout = handshakeTimeout
        self.shutdownTimeout = shutdownTimeout
        self.handshakePromise = handshakeCompleted
        self.logger = logger
    }

    /// Client role: the session to resume on the next connection. With TLS 1.3 it arrives after the handshake,
    /// with the first data read.
    public var session: TLSSession? { self.connection.session }

    // MARK: handshake

    public func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { self.start(context: context) }
    }

    public func channelActive(context: ChannelHandlerContext) {
        self.start(context: context)
        context.fireChannelActive()
    }

    private func start(context: ChannelHandlerContext) {
        guard case .idle = self.state else { return }
        self.state = .handshaking
        let seconds = formatSeconds(self.handshakeTimeout.seconds)
        self.timer = context.eventLoop.assumeIsolated().scheduleTask(in: self.handshakeTimeout) {
            self.failHandshake(
                TLSError(.handshakeTimeout, "no TLS handshake within \(seconds) s: the peer stalled or does not speak TLS"),
                context: context
            )
        }
        if !self.connection.context.isServer {
            self.advanceHandshake(context: context)  // sends the ClientHello
        }
    }

    private func advanceHandshake(context: ChannelHandlerContext) {
        switch self.connection.handshake() {
        case .done:
            self.state = .active
            self.timer?.cancel()
            self.timer = nil
            let info = self.connection.info
            self.handshakePromise?.succeed(info)
            self.handshakePromise = nil
            context.fireUserInboundEventTriggered(TLSEvent.handshakeCompleted(info))
            let queued = self.queued
            self.queued = []
            for (data, promise) in queued { self.encrypt(data, promise: promise) }
            self.flushOutput(context: context)
            self.connection.shrinkBuffers()
        case .wantRead:
            self.flushOutput(context: context)
        case .closed:
            self.failHandshake(TLSError(.handshake, "TLS handshake failed: the peer closed the connection"), context: context)
        case .failed(let entries):
            self.failHandshake(self.connection.explainHandshakeFailure(entries), context: context)
        }
    }

    private func failHandshake(_ error: TLSError, context: ChannelHandlerContext) {
        guard case .handshaking = self.state else { return }
        self.timer?.cancel()
        self.timer = nil
        self.abandonHandshake(error)
        if self.connection.context.isServer {
            self.state = .closed
            // Log it here and keep serving everyone else. Send the alert that tells the client why, shut our
            // side, and discard its input for a while: closing at once would answer the client's unread bytes
            // with a reset that can destroy the alert before the client reads it.
            self.logger?.info(
                "\(error)",
                metadata: ["peer": "\(context.peerDescription)"]
            )
            self.lingerThenClose(context: context)
        } else {
            self.flushOutput(context: context)
            self.fail(error, context: context)
        }
    }

    /// The handshake will not complete: whoever waits for it, or for a queued write, learns why.
    private func abandonHandshake(_ error: any Error) {
        self.handshakePromise?.fail(error)
        self.handshakePromise = nil
        for (_, promise) in self.queued { promise?.fail(error) }
        self.queued = []
    }

    /// The connection is over: remember why (for writes that still arrive), tell the pipeline, close.
    private func fail(_ error: TLSError, context: ChannelHandlerContext) {
        self.state = .closed
        self.failure = error
        context.fireErrorCaught(error)
        context.close(promise: nil)
    }

    /// Sends what is pending (the alert), then closes without losing it to a reset.
    private func lingerThenClose(context: ChannelHandlerContext) {
        self.flushOutput(context: context)
        self.timer = context.shutOutputThenClose(after: .seconds(2))
    }

    // MARK: read

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let bytes = self.unwrapInboundIn(data)
        if !self.receivedAny {
            self.receivedAny = true
            if let first = bytes.getInteger(at: bytes.readerIndex, as: UInt8.self),
                first != Self.handshakeRecord && first != Self.alertRecord
            {
                self.notTLS(bytes, context: context)
                return
            }
        }
        // Never hold the socket's read buffer past this read: NIO reuses it only if nobody else holds it,
        // and otherwise keeps one more in its pool for the life of the connection.
        defer { self.connection.shrinkBuffers() }
        switch self.state {
        case .idle, .closed:
            return
        case .handshaking:
            self.connection.feed(bytes)
            self.advanceHandshake(context: context)
            guard case .active = self.state else { return }
            self.readPlaintext(context: context)
        case .active, .closing:
            self.connection.feed(bytes)
            self.readPlaintext(context: context)
        }
    }

    private func readPlaintext(context: ChannelHandlerContext) {
        // Plaintext is never longer than the ciphertext it came from.
        let capacity = max(self.connection.inputPending, 64)
        var plaintext = self.buffers?.plaintext.take(capacity: capacity) ?? context.channel.allocator.buffer(capacity: capacity)
        let status = self.connection.read(into: &plaintext)
        if plaintext.readableBytes > 0, case .active = self.state {
            context.fireChannelRead(self.wrapInboundOut(plaintext))
        }
        self.buffers?.plaintext.giveBack(plaintext)
        switch status {
        case .done, .wantRead:
            self.flushOutput(context: context)  // tickets, key updates
        case .closed:
            self.receivedCloseNotify = true
            self.flushOutput(context: context)
            if case .closing = self.state {
                context.close(promise: self.closePromise)
                self.closePromise = nil
            } else {
                // The peer finished sending: the same as a TCP half-close, one layer up.
                context.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
            }
        case .failed(let entries):
            self.flushOutput(context: context)
            let text = OpenSSLErrors.describe(entries, fallback: "unknown error")
            let error = TLSError(
                .protocolError,
                "TLS error: " + TLSConnection.hint(for: text, isClient: !self.connection.context.isServer, hasCertificate: self.connection.context.hasCertificate)
            )
            self.fail(error, context: context)
        }
    }

    /// The first bytes were not TLS. A server answers in the protocol's own plaintext error form so a
    /// plaintext client learns why; a client reports that the server did not speak TLS.
    private func notTLS(_ bytes: ByteBuffer, context: ChannelHandlerContext) {
        self.timer?.cancel()
        self.timer = nil
        self.state = .closed
        if self.connection.context.isServer {
            self.logger?.notice(
                "a plaintext client connected to the TLS port; answered with an error",
                metadata: ["peer": "\(context.peerDescription)"]
            )
            var reply = context.channel.allocator.buffer(capacity: 96)
            reply.writeString("error: this port speaks TLS; connect with a TLS client (client --tls)")
            reply.writeInteger(UInt8(0))
            context.write(self.wrapOutboundOut(reply), promise: nil)
            self.lingerThenClose(context: context)
        } else {
            let preview = Array(bytes.readableBytesView.prefix(40))
            let shown = String(decoding: preview.map { $0 >= 0x20 && $0 < 0x7F ? $0 : UInt8(ascii: ".") }, as: UTF8.self)
            let error = TLSError(
                .peerNotTLS,
                "TLS handshake failed: the server did not speak TLS (it answered \"\(shown)\"): is it a plaintext server? try without --tls"
            )
            self.abandonHandshake(error)
            self.fail(error, context: context)
        }
    }

    public func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard let event = event as? ChannelEvent, event == .inputClosed else {
            context.fireUserInboundEventTriggered(event)
            return
        }
        // TCP EOF from the peer.
        switch self.state {
        case .handshaking:
            self.failHandshake(Self.closedDuringHandshake, context: context)
        case .active:
            if !self.receivedCloseNotify { self.fail(Self.uncleanShutdown, context: context) }
        case .closing:
            context.close(promise: self.closePromise)
            self.closePromise = nil
        case .idle, .closed:
            context.close(promise: nil)
        }
    }

    private static let closedDuringHandshake = TLSError(
        .handshake,
        "TLS handshake failed: the peer closed the connection during the handshake"
    )

    private static let uncleanShutdown = TLSError(
        .uncleanShutdown,
        "the peer closed the connection without a TLS close_notify: what it sent may be truncated"
    )

    public func channelInactive(context: ChannelHandlerContext) {
        self.timer?.cancel()
        self.timer = nil
        switch self.state {
        case .handshaking:
            self.abandonHandshake(Self.closedDuringHandshake)
            context.fireErrorCaught(Self.closedDuringHandshake)
        case .active where !self.receivedCloseNotify:
            context.fireErrorCaught(Self.uncleanShutdown)
        default:
            break
        }
        self.state = .closed
        self.abandonHandshake(ChannelError.ioOnClosedChannel)
        for promise in self.encrypted { promise.fail(ChannelError.ioOnClosedChannel) }
        self.encrypted = []
        self.closePromise?.succeed()
        self.closePromise = nil
        context.fireChannelInactive()
    }

    // MARK: write

    public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let plaintext = self.unwrapOutboundIn(data)
        switch self.state {
        case .idle, .handshaking:
            self.queued.append((plaintext, promise))
        case .active:
            self.encrypt(plaintext, promise: promise)
        case .closing, .closed:
            promise?.fail(self.failure ?? ChannelError.outputClosed)
        }
    }

    private func encrypt(_ plaintext: ByteBuffer, promise: EventLoopPromise<Void>?) {
        if self.connection.io.outbound.capacity == 0, let scratch = self.buffers?.ciphertext {
            // Records are written straight into the loop's reusable buffer.
            self.connection.io.outbound = scratch.take(capacity: plaintext.readableBytes + 64)
        }
        if case .failed(let entries) = self.connection.write(plaintext) {
            promise?.fail(TLSError(.protocolError, "TLS write failed: \(OpenSSLErrors.describe(entries, fallback: "unknown error"))"))
            return
        }
        if let promise { self.encrypted.append(promise) }
    }

    public func flush(context: ChannelHandlerContext) {
        switch self.state {
        case .active, .closing:
            self.flushOutput(context: context)
        case .idle, .handshaking, .closed:
            break  // queued writes go out, flushed, when the handshake completes
        }
    }

    /// Sends what OpenSSL has produced for the peer as one write, completing the plaintext writes it carries.
    private func flushOutput(context: ChannelHandlerContext, extra: EventLoopPromise<Void>? = nil) {
        // Taken out before any promise completes: completing one can re-enter this handler and write again.
        var promises = self.encrypted
        self.encrypted = []
        if let extra { promises.append(extra) }
        guard self.connection.outputPending > 0 else {
            for promise in promises { promise.succeed() }
            return
        }
        // Sent as OpenSSL wrote it; the buffer goes back to the loop's scratch once handed over.
        let ciphertext = self.connection.io.takeOutbound()
        defer { self.buffers?.ciphertext.giveBack(ciphertext) }
        let promise: EventLoopPromise<Void>?
        switch promises.count {
        case 0: promise = nil
        case 1: promise = promises[0]
        default:
            let combined = context.eventLoop.makePromise(of: Void.self)
            for waiter in promises { combined.futureResult.cascade(to: waiter) }
            promise = combined
        }
        context.writeAndFlush(self.wrapOutboundOut(ciphertext), promise: promise)
    }

    // MARK: close

    public func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        switch (mode, self.state) {
        case (.all, .active):
            self.state = .closing
            self.closePromise = promise
            self.sendCloseNotify(context: context) {
                if self.receivedCloseNotify {
                    context.close(promise: self.closePromise)
                    self.closePromise = nil
                } else {
                    // Let the peer see EOF too, and wait (bounded) for its close_notify.
                    context.close(mode: .output, promise: nil)
                }
            }
            self.timer = context.eventLoop.assumeIsolated().scheduleTask(in: self.shutdownTimeout) {
                context.close(promise: self.closePromise)
                self.closePromise = nil
            }
        case (.all, .closing):
            if let promise {
                if let existing = self.closePromise {
                    existing.futureResult.cascade(to: promise)
                } else {
                    self.closePromise = promise
                }
            }
        case (.output, .active):
            self.sendCloseNotify(context: context) {
                context.close(mode: .output, promise: promise)
            }
        case (.all, .idle), (.all, .handshaking):
            self.state = .closed
            self.timer?.cancel()
            self.abandonHandshake(ChannelError.ioOnClosedChannel)
            context.close(mode: mode, promise: promise)
        default:
            context.close(mode: mode, promise: promise)
        }
    }

    private func sendCloseNotify(context: ChannelHandlerContext, then: @escaping () -> Void) {
        guard !self.sentCloseNotify else {
            then()
            return
        }
        self.sentCloseNotify = true
        self.connection.shutdown()
        let written = context.eventLoop.makePromise(of: Void.self)
        self.flushOutput(context: context, extra: written)
        written.futureResult.assumeIsolated().whenComplete { _ in then() }
    }
}
