import LengthEchoCore
import NIOCore
import NIOHTTP1
import NIOPosix

/// The status port: HTTP/1.1 on the server's own event loops, for balancers, orchestrators and Prometheus.
///
/// - `GET /healthz`: 200 while the process serves.
/// - `GET /readyz`: 200 while listening and below the connection cap; 503 from the moment a drain starts (so a
///   balancer stops sending before the listeners close) and while the cap is reached.
/// - `GET /metrics`: what `metrics` returns (the executable: Prometheus text from swift-prometheus), after the
///   server's counts are published, so a scrape sees every message answered before it.
/// - Other paths 404, other methods 405; a request NIO cannot parse gets 400 and its connection closes; a
///   connection that sends nothing for 30 s is closed. HEAD is answered like GET, without the body.
public final class StatusServer: Sendable {
    private let channel: any Channel
    /// Where it listens.
    public var localAddress: SocketAddress? { self.channel.localAddress }

    /// The content type Prometheus expects of its text format.
    public static let prometheusContentType = "text/plain; version=0.0.4; charset=utf-8"

    private init(channel: any Channel) {
        self.channel = channel
    }

    /// Serves the status of `server` on `address`, on the server's event loops.
    ///
    /// - Parameter metrics: the body of `/metrics` (its content type is `metricsContentType`).
    public static func start(
        for server: LengthEchoServer,
        host: String,
        port: Int,
        metricsContentType: String = StatusServer.prometheusContentType,
        metrics: @escaping @Sendable () async -> [UInt8]
    ) async throws(LengthEchoError) -> StatusServer {
        let address: SocketAddress
        do {
            address = try SocketAddress.makeAddressResolvingHost(host, port: port)
        } catch {
            throw .bindFailed(host: host, port: port, reason: .hostNotFound)
        }
        let routes = StatusRoutes(server: server, metricsContentType: metricsContentType, metrics: metrics)
        do {
            let channel = try await ServerBootstrap(group: server.group)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        let pipeline = channel.pipeline.syncOperations
                        try pipeline.addHandler(IdleStateHandler(readTimeout: .seconds(30)))
                        try pipeline.configureHTTPServerPipeline(withErrorHandling: true)
                        try pipeline.addHandler(StatusHandler(routes: routes))
                    }
                }
                .bind(to: address).get()
            server.addCompanion(channel)  // stays up through the drain (503 on /readyz), closes with the server
            return StatusServer(channel: channel)
        } catch {
            let errno = (error as? IOError)?.errnoCode
            throw .bindFailed(host: host, port: port, reason: errno.map(Listeners.reason(errno:)) ?? .other("\(error)"))
        }
    }

    /// Stops serving the status now (it also stops with its server).
    public func close() async {
        guard self.channel.isActive else { return }
        try? await self.channel.close()
    }
}

/// What the status port answers, and from what.
struct StatusRoutes: Sendable {
    let server: LengthEchoServer
    let metricsContentType: String
    let metrics: @Sendable () async -> [UInt8]

    struct Response: Sendable {
        var status: HTTPResponseStatus
        var contentType = "text/plain; charset=utf-8"
        var body: [UInt8]
        var allow: String?
    }

    func respond(method: HTTPMethod, path: String) async -> Response {
        let known = ["/healthz", "/readyz", "/metrics"]
        guard known.contains(path) else { return Response(status: .notFound, body: Array("not found\n".utf8)) }
        guard method == .GET || method == .HEAD else {
            return Response(status: .methodNotAllowed, body: Array("use GET\n".utf8), allow: "GET, HEAD")
        }
        switch path {
        case "/healthz":
            return Response(status: .ok, body: Array("ok\n".utf8))
        case "/readyz":
            switch self.server.readiness {
            case .ready: return Response(status: .ok, body: Array("ready\n".utf8))
            case .draining: return Response(status: .serviceUnavailable, body: Array("draining\n".utf8))
            case .full: return Response(status: .serviceUnavailable, body: Array("at the connection cap\n".utf8))
            }
        default:
            await self.server.publishMetrics()
            return Response(status: .ok, contentType: self.metricsContentType, body: await self.metrics())
        }
    }
}

/// One status connection: a request at a time, answered in order; keep-alive as the client asks.
final class StatusHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let routes: StatusRoutes
    private var head: HTTPRequestHead?

    init(routes: StatusRoutes) {
        self.routes = routes
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch self.unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
        case .body:
            break  // no route takes a body
        case .end:
            guard let head = self.head else { return }
            self.head = nil
            let path = String(head.uri.prefix { $0 != "?" })
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
        if !keepAlive { headers.add(name: "connection", value: "close") }
        let head = HTTPResponseHead(version: request.version, status: response.status, headers: headers)
        context.write(self.wrapOutboundOut(.head(head)), promise: nil)
        if request.method != .HEAD {
            var body = context.channel.allocator.buffer(capacity: response.body.count)
            body.writeBytes(response.body)
            context.write(self.wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        }
        let written = context.eventLoop.makePromise(of: Void.self)
        context.writeAndFlush(self.wrapOutboundOut(.end(nil)), promise: written)
        if !keepAlive {
            written.futureResult.assumeIsolated().whenComplete { _ in context.close(promise: nil) }
        }
    }

    /// A request NIO could not parse: its error handler has answered 400; the connection ends here.
    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            context.close(promise: nil)
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }
}
