import LengthEchoCore
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// The status port: HTTP/1.1 on the server's own event loops, for balancers, orchestrators and Prometheus.
///
/// - `GET /healthz`: 200 while the process serves.
/// - `GET /readyz`: 200 while listening and below the connection cap; 503 from the moment a drain starts (so a
///   balancer stops sending before the listeners close) and while the cap is reached.
/// - `GET /metrics`: what `metrics` returns (the executable: Prometheus text from swift-prometheus), after the
///   server's counts are published, so a scrape sees every message answered before it.
/// - Other paths 404, other methods 405; a request NIO cannot parse gets 400 and its connection closes; a request
///   with a body gets 413. HEAD is answered like GET, without the body. The target may be in origin form
///   (`/metrics`) or absolute form (`http://host/metrics`, RFC 9112 3.2.2).
///
/// Its own limits (`Limits`): at most 64 connections (more get 503 and are closed at once), a head of at most
/// 8 KiB and 100 fields (431), a head complete within 5 s of its first byte (408), 30 s idle between requests,
/// and 10 s to write each response; every way a status connection can end has a deadline.
public final class StatusServer: Sendable {
    private let channel: any Channel
    /// Where it listens.
    public var localAddress: SocketAddress? { self.channel.localAddress }

    /// The content type Prometheus expects of its text format.
    public static let prometheusContentType = "text/plain; version=0.0.4; charset=utf-8"

    private init(channel: any Channel) {
        self.channel = channel
    }

    /// Serves the status of `server` on `host` and `port`, on the server's event loops.
    ///
    /// - Parameters:
    ///   - server: the server whose health and readiness `/healthz` and `/readyz` report.
    ///   - host: the address to listen on (a name is resolved once).
    ///   - port: the port to listen on; 0 lets the system pick one.
    ///   - metricsContentType: the content type of `/metrics`' answers.
    ///   - limits: the status port's own connection cap, head limits and deadlines.
    ///   - metrics: the body of `/metrics`, made for each request.
    /// - Throws: `LengthEchoError.bindFailed` when it cannot listen there.
    public static func start(
        for server: LengthEchoServer,
        host: String,
        port: Int,
        metricsContentType: String = StatusServer.prometheusContentType,
        limits: Limits = Limits(),
        metrics: @escaping @Sendable () async -> [UInt8]
    ) async throws(LengthEchoError) -> StatusServer {
        let address: SocketAddress
        do {
            address = try SocketAddress.makeAddressResolvingHost(host, port: port)
        } catch {
            throw .bindFailed(host: host, port: port, reason: .hostNotFound)
        }
        let routes = StatusRoutes(server: server, metricsContentType: metricsContentType, metrics: metrics)
        let admission = StatusAdmission(limit: limits.maximumConnections)
        do {
            let channel = try await ServerBootstrap(group: server.group)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        let pipeline = channel.pipeline.syncOperations
                        guard admission.admit() else {
                            try pipeline.addHandler(BusyRejectHandler(refusal: StatusAdmission.refusal))
                            return
                        }
                        // The one place a status connection's slot is given back.
                        channel.closeFuture.whenComplete { _ in admission.release() }
                        try pipeline.addHandler(StatusConnectionHandler(limits: limits))
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

    /// The path of a request target: origin form (`/metrics?x`) or absolute form (`http://host/metrics`, which
    /// RFC 9112 3.2.2 requires a server to accept), without its query.
    static func path(of target: String) -> Substring {
        var rest = Substring(target)
        for scheme in ["http://", "https://"] where rest.lowercased().hasPrefix(scheme) {
            rest = rest.dropFirst(scheme.count)
            guard let slash = rest.firstIndex(where: { $0 == "/" || $0 == "?" }), rest[slash] == "/" else {
                return "/"
            }
            rest = rest[slash...]
        }
        return rest.prefix { $0 != "?" }
    }

    func respond(method: HTTPMethod, path: Substring) async -> Response {
        let known = ["/healthz", "/readyz", "/metrics"]
        guard known.contains(String(path)) else { return Response(status: .notFound, body: Array("not found\n".utf8)) }
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

/// The status port's connection cap: a count of open status connections, apart from the main port's.
final class StatusAdmission: Sendable {
    private let tracker: ConnectionTracker
    /// Connections refused since memory was last given back.
    private let refused = Atomic<Int>(0)

    /// What a connection over the cap gets before it is closed.
    static let refusal: ByteBuffer = {
        let body = "too many status connections; try again later\n"
        return ByteBuffer(
            string: "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
                + "content-length: \(body.utf8.count)\r\nretry-after: 1\r\nconnection: close\r\n\r\n\(body)")
    }()

    init(limit: Int) {
        self.tracker = ConnectionTracker(limit: limit)
    }

    func admit() -> Bool {
        if self.tracker.admit() { return true }
        self.refused.add(1, ordering: .relaxed)
        return false
    }

    /// A status connection closed. The last one after a flood (the cap's worth refused) gives the memory the
    /// flood took back to the system.
    func release() {
        self.tracker.release()
        guard self.tracker.count == 0, self.refused.load(ordering: .relaxed) >= self.tracker.limit else { return }
        self.refused.store(0, ordering: .relaxed)
        Memory.giveBack()
    }
}
