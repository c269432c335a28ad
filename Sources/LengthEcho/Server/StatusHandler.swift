import NIOCore
import NIOHTTP1

/// Told by `StatusHandler` (as an outbound user event) each time a response has been written.
struct StatusAnswered {}

/// The status connection's rules (`StatusConnectionRules`) carried out: ahead of the HTTP parser, it counts a
/// request head's bytes and fields and refuses one over the limits before the parser holds it; a timer checks the
/// deadlines (idle, head, answer) and closes the connection when one passes.
final class StatusConnectionHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = IOData
    typealias OutboundOut = ByteBuffer

    private var rules: StatusConnectionRules
    private var timer: Scheduled<Void>?
    private let tick: TimeAmount
    private var ended = false

    init(limits: StatusLimits) {
        self.rules = StatusConnectionRules(limits: limits, now: .now())
        // Deadlines are found within a quarter of the shortest timeout (at most a second late).
        let shortest = min(limits.headTimeout.nanoseconds, limits.answerTimeout.nanoseconds)
        self.tick = .nanoseconds(min(max(shortest / 4, 10_000_000), 1_000_000_000))
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.scheduleCheck(context: context)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.timer?.cancel()
        self.timer = nil
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.timer?.cancel()
        self.timer = nil
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !self.ended else { return }
        let bytes = self.unwrapInboundIn(data)
        let action = bytes.withUnsafeReadableBytes { self.rules.received($0, now: .now()) }
        guard self.carryOut(action, context: context) else { return }
        context.fireChannelRead(data)
    }

    func triggerUserOutboundEvent(context: ChannelHandlerContext, event: Any, promise: EventLoopPromise<Void>?) {
        guard event is StatusAnswered else {
            context.triggerUserOutboundEvent(event, promise: promise)
            return
        }
        self.rules.answered(now: .now())
        promise?.succeed()
    }

    private func scheduleCheck(context: ChannelHandlerContext) {
        self.timer = context.eventLoop.assumeIsolated().scheduleTask(in: self.tick) {
            self.timer = nil
            guard self.carryOut(self.rules.check(now: .now()), context: context), context.channel.isActive else {
                return
            }
            self.scheduleCheck(context: context)
        }
    }

    /// Returns whether the connection goes on.
    private func carryOut(_ action: StatusConnectionRules.Action, context: ChannelHandlerContext) -> Bool {
        switch action {
        case .none:
            return true
        case .close:
            self.ended = true
            context.close(promise: nil)
        case .refuse(let refusal):
            self.ended = true
            let written = context.eventLoop.makePromise(of: Void.self)
            context.writeAndFlush(self.wrapOutboundOut(ByteBuffer(string: refusal.response)), promise: written)
            written.futureResult.assumeIsolated().whenComplete { _ in context.close(promise: nil) }
        }
        return false
    }
}

/// One status connection: a request at a time, answered in order; keep-alive as the client asks.
final class StatusHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let routes: StatusRoutes
    private var head: HTTPRequestHead?
    /// A request came with a body: it was answered 413, and the connection is closing.
    private var refusingBody = false

    init(routes: StatusRoutes) {
        self.routes = routes
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch self.unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
        case .body:
            // No route takes a body, and the status port reads none: refuse, and close.
            guard let head = self.head else { return }
            self.head = nil
            self.refusingBody = true
            var request = head
            request.headers.replaceOrAdd(name: "connection", value: "close")
            self.write(
                StatusRoutes.Response(status: .payloadTooLarge, body: Array("no request body is taken here\n".utf8)),
                for: request, context: context)
        case .end:
            guard let head = self.head, !self.refusingBody else { return }
            self.head = nil
            let path = StatusRoutes.path(of: head.uri)
            let routes = self.routes
            let method = head.method
            let response = context.eventLoop.makeFutureWithTask { await routes.respond(method: method, path: path) }
            response.assumeIsolated().whenSuccess { response in
                self.write(response, for: head, context: context)
            }
        }
    }

    private func write(_ response: StatusRoutes.Response, for request: HTTPRequestHead, context: ChannelHandlerContext)
    {
        var headers = HTTPHeaders()
        headers.add(name: "content-type", value: response.contentType)
        headers.add(name: "content-length", value: "\(response.body.count)")
        if let allow = response.allow { headers.add(name: "allow", value: allow) }
        let keepAlive = request.isKeepAlive
        if !keepAlive {
            headers.add(name: "connection", value: "close")
        } else if request.version.major == 1 && request.version.minor == 0 {
            headers.add(name: "connection", value: "keep-alive")  // HTTP/1.0 closes unless told otherwise
        }
        let head = HTTPResponseHead(version: request.version, status: response.status, headers: headers)
        context.write(self.wrapOutboundOut(.head(head)), promise: nil)
        if request.method != .HEAD {
            var body = context.channel.allocator.buffer(capacity: response.body.count)
            body.writeBytes(response.body)
            context.write(self.wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        }
        let written = context.eventLoop.makePromise(of: Void.self)
        context.writeAndFlush(self.wrapOutboundOut(.end(nil)), promise: written)
        written.futureResult.assumeIsolated().whenComplete { result in
            switch result {
            case .success where keepAlive: context.triggerUserOutboundEvent(StatusAnswered(), promise: nil)
            default: context.close(promise: nil)
            }
        }
    }

    /// A request NIO could not parse: its error handler has answered 400; the connection ends here.
    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
