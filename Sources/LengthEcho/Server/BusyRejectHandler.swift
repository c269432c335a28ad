import NIOCore

/// Answers a connection over the server's limit with one error line, then closes it.
final class BusyRejectHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let refusal: ByteBuffer

    init(refusal: ByteBuffer) {
        self.refusal = refusal
    }

    private var sent = false

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { self.refuse(context: context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        self.refuse(context: context)
    }

    private func refuse(context: ChannelHandlerContext) {
        guard !self.sent else { return }
        self.sent = true
        let written = context.eventLoop.makePromise(of: Void.self)
        context.writeAndFlush(self.wrapOutboundOut(self.refusal), promise: written)
        written.futureResult.assumeIsolated().whenComplete { _ in context.close(promise: nil) }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {}
}
