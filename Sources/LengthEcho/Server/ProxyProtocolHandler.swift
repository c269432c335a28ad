import LengthEchoCore
import NIOCore

/// Behind a balancer: reads the PROXY protocol header (v1 or v2) that must begin every connection, makes
/// the client it names the connection's peer, then builds the rest of the pipeline and leaves it.
///
/// A connection from an address not trusted to send headers, one that does not begin with a valid header,
/// and one whose header is not finished within the deadline are closed without a word (nothing echoed, no
/// error line: the bytes are not the protocol's) and the reason goes in the connection's record. Nothing
/// after this stage ever sees the header's bytes (the v2 signature holds a NUL).
final class ProxyProtocolHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private let trusted: [AddressRange]
    private let timeout: TimeAmount
    private let record: ConnectionRecord
    /// Builds the stages after this one, once the peer is known.
    private let next: (ChannelHandlerContext) throws -> Void
    private var received: ByteBuffer?
    private var timer: Scheduled<Void>?
    private var finished = false

    init(
        trusted: [AddressRange],
        timeout: TimeAmount,
        record: ConnectionRecord,
        next: @escaping (ChannelHandlerContext) throws -> Void
    ) {
        self.trusted = trusted
        self.timeout = timeout
        self.record = record
        self.next = next
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { self.start(context: context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        self.start(context: context)
        context.fireChannelActive()
    }

    private func start(context: ChannelHandlerContext) {
        guard self.timer == nil, !self.finished else { return }
        guard let balancer = self.record.peer.address else {
            // Gone before its address could be read (accepted after a reset: a balancer's layer-4 check, say).
            self.finished = true
            self.record.end(.reset, detail: "the peer closed before its address could be read")
            context.close(promise: nil)
            return
        }
        guard self.trusted.contains(where: { $0.contains(balancer) }) else {
            self.refuse("the connection came from an address not trusted to send PROXY headers", context: context)
            return
        }
        let seconds = formatSeconds(self.timeout.seconds)
        self.timer = context.eventLoop.assumeIsolated().scheduleTask(in: self.timeout) {
            self.refuse("no complete PROXY header within \(seconds) s", context: context)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !self.finished else { return }
        var bytes = self.unwrapInboundIn(data)
        if var received = self.received {
            received.writeBuffer(&bytes)
            bytes = received
        }
        let parsed: (header: ProxyHeader, length: Int)?
        do {
            parsed = try ProxyProtocol.parse(bytes)
        } catch {
            self.refuse(error.description, context: context)
            return
        }
        guard let (header, length) = parsed else {
            self.received = bytes  // at most one header's worth: longer is refused above
            return
        }
        self.finished = true
        self.timer?.cancel()
        self.timer = nil
        self.received = nil
        switch header {
        case .proxied(let source, _):
            self.record.peer.via = self.record.peer.address
            self.record.peer.address = source
        case .local:
            self.record.isHealthCheck = true
        case .unknown:
            break
        }
        do {
            try self.next(context)
        } catch {
            self.record.end(.error, detail: "\(error)")
            context.close(promise: nil)
            return
        }
        // What followed the header (a message, a ClientHello) goes to the stages just built; then this one
        // leaves (after that it could pass nothing on).
        bytes.moveReaderIndex(forwardBy: length)
        if bytes.readableBytes > 0 {
            context.fireChannelRead(self.wrapInboundOut(bytes))
        }
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.timer?.cancel()
        self.timer = nil
        if !self.finished { self.record.end(.proxyRefused, detail: "closed before a complete PROXY header") }
        context.fireChannelInactive()
    }

    private func refuse(_ reason: String, context: ChannelHandlerContext) {
        guard !self.finished else { return }
        self.finished = true
        self.timer?.cancel()
        self.timer = nil
        self.received = nil
        self.record.end(.proxyRefused, detail: reason)
        context.close(promise: nil)
    }
}
