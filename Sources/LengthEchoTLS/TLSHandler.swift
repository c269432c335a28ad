import LengthEchoCore
import NIOCore

/// Events the TLS handler sends up the pipeline.
package enum TLSEvent: Sendable {
    case handshakeCompleted(TLSConnectionInfo)
    /// Server role: the handshake failed (or the peer did not speak TLS, or stalled); the handler tells the
    /// peer why and closes. Sent before the close, so the stages above can say why the connection ended.
    case handshakeFailed(TLSError)
}

/// TLS as one NIO channel handler, for both roles: ciphertext below it, plaintext above it.
///
/// A state machine whose states own their data: the handshake its timer and the promise waiting for it,
/// a close its timer and promise, a refused peer its linger. Reads feed ciphertext to OpenSSL and pass up
/// whatever plaintext comes out. Writes keep NIO's contract: they are buffered until `flush`, each flush
/// becomes one ciphertext write, nothing unflushed ever leaves, and a flush during the handshake is
/// remembered and honoured once it completes. Closing sends close_notify, then waits (bounded) for the
/// peer's. A peer that goes away without close_notify is reported as an unclean shutdown, since its data
/// may have been cut short.
package final class TLSHandler: ChannelDuplexHandler {
    package typealias InboundIn = ByteBuffer
    package typealias InboundOut = ByteBuffer
    package typealias OutboundIn = ByteBuffer
    package typealias OutboundOut = ByteBuffer

    enum State {
        /// Not active yet; the promise waits for the handshake.
        case idle(EventLoopPromise<TLSConnectionInfo>?)
        case handshaking(Handshake)
        /// Plaintext flows both ways.
        case active
        /// Our close_notify is sent and our write side shut (`close(mode: .output)`); reads go on.
        case outputClosed
        /// Closing: close_notify sent, waiting (bounded) for the peer's, its EOF, or the timer.
        case closing(timer: Scheduled<Void>, promise: EventLoopPromise<Void>?)
        /// Server role: the handshake failed or the peer spoke plaintext. What tells it why (an alert, an
        /// error line) is on its way; input is discarded until the peer closes or the linger ends.
        case refusing(linger: Scheduled<Void>)
        /// Over; writes fail with `failure` when the connection failed, else as writes on a closed channel.
        case closed(failure: TLSError?)
    }

    struct Handshake {
        var timer: Scheduled<Void>
        var promise: EventLoopPromise<TLSConnectionInfo>?
        /// Whether any byte has arrived (the first tells whether the peer speaks TLS at all).
        var receivedAny = false
    }

    /// Whether a connection's first bytes look like TLS: a record of a type TLS has (change_cipher_spec, alert,
    /// handshake, application_data, heartbeat), or an SSLv2-format ClientHello (a 2-byte length with the top bit
    /// set, then message type 1). OpenSSL answers those, with an alert where it refuses them, as `openssl s_server`
    /// does; anything else is a plaintext client, told so in the protocol's own form.
    static func looksLikeTLS(_ bytes: ByteBuffer) -> Bool {
        guard let first = bytes.getInteger(at: bytes.readerIndex, as: UInt8.self) else { return true }
        if (0x14...0x18).contains(first) { return true }
        guard first & 0x80 != 0 else { return false }
        guard let type = bytes.getInteger(at: bytes.readerIndex + 2, as: UInt8.self) else { return true }
        return type == 1
    }
    /// How long a refused peer gets to read why before the connection closes.
    static let lingerTime: TimeAmount = .seconds(2)

    let connection: TLSConnection
    private let handshakeTimeout: TimeAmount
    let shutdownTimeout: TimeAmount
    /// Server role: what to send a client that speaks plaintext to this port (nil: close without a word).
    private let plaintextRefusal: ByteBuffer?
    /// This event loop's reusable buffers, when the pipeline's owner provides them.
    let buffers: LoopBuffers?
    var state: State
    /// Application writes not yet encrypted, and how many of them have been flushed.
    var writes = PendingWrites()
    /// Whether the peer's close_notify has arrived: its direction is finished, whatever ours is doing.
    var inputClosed = false
    /// Whether a read from the socket is being handled: what OpenSSL says meanwhile (a handshake flight, a
    /// ticket) waits in the BIO for the end of the read burst, to leave in one write with the replies it caused.
    var inRead = false
    /// The promises of writes whose ciphertext waits so.
    var deferredPromises: [EventLoopPromise<Void>] = []

    /// - Parameters:
    ///   - expectedHost: client role: the name or address connected to, sent as SNI (names only) and verified.
    ///   - handshakeCompleted: completed with what the handshake agreed on, or failed with why it failed.
    ///   - plaintextRefusal: server role: the bytes to answer a client that speaks plaintext to this port
    ///     (the protocol's own error reply); nil closes such a connection without a word.
    package init(
        context: TLSContext,
        expectedHost: String? = nil,
        handshakeTimeout: TimeAmount = .seconds(10),
        shutdownTimeout: TimeAmount = .seconds(3),
        handshakeCompleted: EventLoopPromise<TLSConnectionInfo>? = nil,
        resuming session: TLSSession? = nil,
        plaintextRefusal: ByteBuffer? = nil,
        buffers: LoopBuffers? = nil
    ) throws(TLSError) {
        self.connection = try TLSConnection(context: context, expectedHost: expectedHost, session: session)
        self.handshakeTimeout = handshakeTimeout
        self.shutdownTimeout = shutdownTimeout
        self.state = .idle(handshakeCompleted)
        self.plaintextRefusal = plaintextRefusal
        self.buffers = buffers
    }

    /// Client role: the session to resume on the next connection. With TLS 1.3 it arrives after the handshake,
    /// with the first data read.
    package var session: TLSSession? { self.connection.session }

    // MARK: handshake

    package func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { self.start(context: context) }
    }

    package func channelActive(context: ChannelHandlerContext) {
        self.start(context: context)
        context.fireChannelActive()
    }

    private func start(context: ChannelHandlerContext) {
        guard case .idle(let promise) = self.state else { return }
        let seconds = formatSeconds(self.handshakeTimeout.seconds)
        let timer = context.eventLoop.assumeIsolated().scheduleTask(in: self.handshakeTimeout) {
            self.failHandshake(
                TLSError(
                    .handshakeTimeout, "no TLS handshake within \(seconds) s: the peer stalled or does not speak TLS"),
                context: context
            )
        }
        self.state = .handshaking(Handshake(timer: timer, promise: promise))
        if !self.connection.isServer {
            self.advanceHandshake(context: context)  // sends the ClientHello
        }
    }

    private func advanceHandshake(context: ChannelHandlerContext) {
        guard case .handshaking(let handshake) = self.state else { return }
        switch self.connection.handshake() {
        case .done:
            handshake.timer.cancel()
            self.state = .active
            let info = self.connection.info
            handshake.promise?.succeed(info)
            context.fireUserInboundEventTriggered(TLSEvent.handshakeCompleted(info))
            // One write: the handshake's last flight (a server's: its ticket), whatever was flushed while it ran
            // and, within a read, the replies to what came with it.
            self.encryptFlushedWrites(context: context, soon: true)
        case .wantRead:
            self.sendOutput(context: context, soon: true)
        case .closed:
            self.failHandshake(Self.closedDuringHandshake, context: context)
        case .failed(let entries):
            self.failHandshake(self.connection.explainHandshakeFailure(entries), context: context)
        }
    }

    private func failHandshake(_ error: TLSError, context: ChannelHandlerContext) {
        guard case .handshaking(let handshake) = self.state else { return }
        handshake.timer.cancel()
        handshake.promise?.fail(error)
        self.writes.failAll(error)
        if self.connection.isServer {
            // Report it to the stages above (which say why the connection ended) and keep serving everyone
            // else. Send the alert that tells the client why, shut our side, and discard its input for a while:
            // closing at once would answer the client's unread bytes with a reset that can destroy the alert
            // before the client reads it. A stalled peer has nothing to read: it loses its slot at once.
            self.state = .closed(failure: error)
            context.fireUserInboundEventTriggered(TLSEvent.handshakeFailed(error))
            if case .handshakeTimeout = error.kind {
                context.close(promise: nil)
            } else {
                self.sendOutput(context: context)
                self.linger(context: context)
            }
        } else {
            self.sendOutput(context: context)
            self.fail(error, context: context)
        }
    }

    /// Enters `.refusing`: what was written last reaches the peer, whose input is discarded until it
    /// closes or the linger ends. (The state is set before any I/O, which can re-enter the handler.)
    private func linger(context: ChannelHandlerContext) {
        let linger = context.shutOutputThenClose(after: Self.lingerTime)
        if context.channel.isActive, case .closed = self.state {
            self.state = .refusing(linger: linger)
        } else {
            linger.cancel()
        }
    }

    /// The connection is over: remember why (for writes that still arrive), tell the pipeline, close.
    func fail(_ error: TLSError, context: ChannelHandlerContext) {
        var closePromise: EventLoopPromise<Void>?
        if case .closing(_, let promise) = self.state { closePromise = promise }
        self.cancelTimers()
        self.state = .closed(failure: error)
        self.writes.failAll(error)
        context.fireErrorCaught(error)
        context.close(promise: closePromise)
    }

    func cancelTimers() {
        switch self.state {
        case .handshaking(let handshake): handshake.timer.cancel()
        case .closing(let timer, _): timer.cancel()
        case .refusing(let linger): linger.cancel()
        case .idle, .active, .outputClosed, .closed: break
        }
    }

    // MARK: read

    package func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let bytes = self.unwrapInboundIn(data)
        self.inRead = true
        // Never hold the socket's read buffer past this read: NIO reuses it only if nobody else holds it,
        // and otherwise keeps one more in its pool for the life of the connection.
        defer {
            self.inRead = false
            self.connection.releaseIdleBuffers()
        }
        switch self.state {
        case .idle, .refusing, .closed:
            return  // nothing to say to the peer any more: discarded
        case .handshaking(var handshake):
            if !handshake.receivedAny {
                handshake.receivedAny = true
                self.state = .handshaking(handshake)
                if !Self.looksLikeTLS(bytes) {
                    self.notTLS(bytes, context: context)
                    return
                }
            }
            self.connection.feed(bytes)
            self.advanceHandshake(context: context)
            guard case .active = self.state else { return }
            self.readPlaintext(context: context)
        case .active, .outputClosed, .closing:
            self.connection.feed(bytes)
            self.readPlaintext(context: context)
        }
    }

    private func readPlaintext(context: ChannelHandlerContext) {
        // Plaintext is never longer than the ciphertext it came from.
        let capacity = max(self.connection.inputPending, 64)
        var plaintext =
            self.buffers?.plaintext.take(capacity: capacity) ?? context.channel.allocator.buffer(capacity: capacity)
        let status = self.connection.read(into: &plaintext)
        if plaintext.readableBytes > 0 {
            switch self.state {
            case .active, .outputClosed: context.fireChannelRead(self.wrapInboundOut(plaintext))
            default: break  // closing: the application asked for no more
            }
        }
        self.buffers?.plaintext.giveBack(plaintext)
        switch status {
        case .done, .wantRead:
            // A write that waited for this read goes now; else what OpenSSL said (tickets, key updates).
            if self.writes.hasFlushed, case .active = self.state {
                self.encryptFlushedWrites(context: context, soon: true)
            } else {
                self.sendOutput(context: context, soon: true)
            }
        case .closed:
            self.inputClosed = true
            self.sendOutput(context: context)
            switch self.state {
            case .closing:
                self.closeNow(context: context)
            case .active, .outputClosed:
                // The peer finished sending: the same as a TCP half-close, one layer up.
                context.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
            default:
                break
            }
        case .failed(let entries):
            self.sendOutput(context: context)
            self.fail(self.connection.explainFailure(entries), context: context)
        }
    }

    /// The first bytes were not TLS. A server answers with the refusal it was given (in the protocol's
    /// own plaintext form, so a plaintext client learns why); a client reports that the server did not
    /// speak TLS.
    private func notTLS(_ bytes: ByteBuffer, context: ChannelHandlerContext) {
        guard case .handshaking(let handshake) = self.state else { return }
        handshake.timer.cancel()
        if self.connection.isServer {
            let error = TLSError(.handshake, "the client did not speak TLS", cause: .peerNotTLS)
            handshake.promise?.fail(error)
            context.fireUserInboundEventTriggered(TLSEvent.handshakeFailed(error))
            self.state = .closed(failure: nil)
            if let refusal = self.plaintextRefusal {
                context.write(self.wrapOutboundOut(refusal), promise: nil)
            }
            self.linger(context: context)
        } else {
            let preview = Array(bytes.readableBytesView.prefix(40))
            let error = TLSError(
                .handshake,
                "TLS handshake failed: the server did not speak TLS (it answered \"\(Escaping.printable(preview))\"): is it a plaintext server?",
                cause: .peerNotTLS
            )
            handshake.promise?.fail(error)
            self.fail(error, context: context)
        }
    }

    package func channelReadComplete(context: ChannelHandlerContext) {
        // The stages above flush their replies here, which sends what waited with them.
        context.fireChannelReadComplete()
        // Outside a read every send takes all there is: anything still here waited for this.
        if self.connection.outputPending > 0 || !self.deferredPromises.isEmpty { self.sendOutput(context: context) }
    }

    package func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard let event = event as? ChannelEvent, event == .inputClosed else {
            context.fireUserInboundEventTriggered(event)
            return
        }
        // TCP EOF from the peer.
        switch self.state {
        case .handshaking:
            self.failHandshake(Self.closedDuringHandshake, context: context)
        case .active, .outputClosed:
            if !self.inputClosed { self.fail(Self.uncleanShutdown, context: context) }
        case .closing:
            self.closeNow(context: context)
        case .idle, .refusing, .closed:
            self.cancelTimers()
            context.close(promise: nil)
        }
    }

    static let closedDuringHandshake = TLSError(
        .handshake,
        "TLS handshake failed: the peer closed the connection during the handshake"
    )

    static let uncleanShutdown = TLSError(
        .uncleanShutdown,
        "the peer closed the connection without a TLS close_notify: what it sent may be truncated"
    )

    package func channelInactive(context: ChannelHandlerContext) {
        let state = self.state
        self.cancelTimers()
        self.state = .closed(failure: nil)
        switch state {
        case .handshaking(let handshake):
            handshake.promise?.fail(Self.closedDuringHandshake)
            self.writes.failAll(Self.closedDuringHandshake)
            context.fireErrorCaught(Self.closedDuringHandshake)
        case .idle(let promise):
            promise?.fail(ChannelError.ioOnClosedChannel)
        case .active where !self.inputClosed:
            context.fireErrorCaught(Self.uncleanShutdown)
        case .closing(_, let promise):
            promise?.succeed()
        case .closed(let failure):
            self.state = .closed(failure: failure)
        default:
            break
        }
        self.writes.failAll(ChannelError.ioOnClosedChannel)
        let deferred = self.deferredPromises
        self.deferredPromises = []
        for promise in deferred { promise.fail(ChannelError.ioOnClosedChannel) }
        context.fireChannelInactive()
    }
}
