import Foundation
import LengthEcho
import LengthEchoCore
import LengthEchoTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// One HTTP/1.1 request to 127.0.0.1:`port`, `Connection: close`; the status code and the body.
func http(
    _ path: String = "/", method: String = "GET", port: Int, raw: String? = nil
) throws -> (status: Int, body: String) {
    let socket = try RawSocket.connect(port: port)
    try socket.write(raw ?? "\(method) \(path) HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    let response = String(decoding: try socket.readUntilClosed(), as: UTF8.self)
    let status = Int(response.split(separator: " ").dropFirst().first ?? "") ?? -1
    let body = response.components(separatedBy: "\r\n\r\n").dropFirst().joined(separator: "\r\n\r\n")
    return (status, body)
}

/// The value of one sample (`name{labels} value`) in Prometheus text.
func sample(_ metrics: String, _ series: String) -> Double? {
    metrics.split(separator: "\n").first { $0.hasPrefix(series + " ") }.flatMap {
        Double($0.split(separator: " ").last ?? "")
    }
}

/// The `server` executable with `--status 0`: its process, its port and its status port.
func startWithStatus(_ flags: [String] = []) async throws -> (Executable, Int, Int) {
    let (server, port) = try await startServerExecutable(["--status", "0", "--quiet"] + flags)
    await server.wait(seconds: 10) { $0.stderr.contains("status on http://") || !$0.isRunning }
    let line = try #require(server.stderr.split(separator: "\n").first { $0.contains("status on http://") })
    let status = try #require(
        line.components(separatedBy: "http://127.0.0.1:").last.flatMap { Int($0.prefix { $0.isNumber }) })
    return (server, port, status)
}

@Suite("The status port: health, readiness, Prometheus metrics", .timeLimit(.minutes(1)))
struct StatusTests {
    @Test("a scrape sees every message answered before it, open connections included; bad requests get 4xx")
    func metrics() async throws {
        let (server, port, status) = try await startWithStatus()
        defer { server.terminate() }
        let scraped = try await blocking { () -> String in
            // Three messages on a connection that stays open while the scrape happens.
            let open = try RawSocket.connect(port: port)
            for message in ["one", "two", "three"] {
                try open.write(bytes(message) + [0])
                _ = try ServerTests.step("reply to \(message)") { try open.readReply() }
            }
            return try ServerTests.step("scrape") { try http("/metrics", port: status).body }
        }
        #expect(sample(scraped, "length_echo_messages_total") == 3, "\(scraped)")
        #expect(sample(scraped, "length_echo_bytes_total{direction=\"in\"}") == 14)
        #expect(sample(scraped, "length_echo_bytes_total{direction=\"out\"}") == 26)
        #expect(sample(scraped, "length_echo_connections_open") == 1)
        #expect(sample(scraped, "length_echo_connections_total") == 1)
        #expect(scraped.contains("# TYPE length_echo_connection_seconds histogram"))

        let (health, ready) = try await blocking {
            (try http("/healthz", port: status), try http("/readyz", port: status))
        }
        #expect(health.status == 200 && ready.status == 200 && ready.body == "ready\n")
        let refusals = try await blocking {
            [
                try http("/nothing", port: status).status, try http("/metrics", method: "POST", port: status).status,
                try http(port: status, raw: "BREW /pot HTCPCP/1.0 \u{1}\r\n\r\n").status,
                try http(port: status, raw: "GET /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello").status,
            ]
        }
        #expect(refusals == [404, 405, 400, 413])
        // A too-large message and a busy refusal are counted by kind once their connections end.
        #expect(try await blocking { try http("/healthz", port: status).status } == 200, "it goes on serving")
    }

    @Test("/readyz is 503 at the connection cap, and from the moment a drain starts")
    func readiness() async throws {
        let (server, port, status) = try await startWithStatus(["--max-connections", "1", "--drain-timeout", "5"])
        defer { server.terminate(signal: SIGKILL) }
        let holder = try await blocking { () -> RawSocket in
            let holder = try RawSocket.connect(port: port)
            try holder.write(bytes("hold") + [0])
            _ = try holder.readReply()
            return holder
        }
        let full = try await blocking { try http("/readyz", port: status) }
        #expect(full.status == 503 && full.body == "at the connection cap\n")
        try await blocking { try holder.write(bytes("half a mess")) }  // keeps the drain waiting
        server.terminate()
        await server.wait(seconds: 10) { $0.stderr.contains("draining") || !$0.isRunning }
        let draining = try await blocking { try http("/readyz", port: status) }
        #expect(draining.status == 503 && draining.body == "draining\n", "\(draining)")
        #expect(try await blocking { try http("/healthz", port: status).status } == 200, "alive while it drains")
        try await blocking { try holder.write(bytes("age") + [0]) }
        #expect(try await blocking { try holder.readReplyText() } == "14 : half a message")
        #expect(await server.exitStatus() == 0)
    }

    @Test("TLS: the certificate's expiry is a metric, and one about to expire is warned about at start")
    func certificateExpiry() async throws {
        let certificates = try TestCertificates.generate("short", ["--days", "3"])
        let (server, _, status) = try await startWithStatus([
            "--tls", "--cert", certificates.serverCertificate, "--key", certificates.serverKey,
        ])
        defer { server.terminate() }
        await server.wait(seconds: 10) { $0.stderr.contains("warning: the certificate") || !$0.isRunning }
        #expect(server.stderr.contains("warning: the certificate expires in 2 days"), "\(server.stderr)")
        let scraped = try await blocking { try http("/metrics", port: status).body }
        let expiry = try #require(sample(scraped, "length_echo_tls_certificate_expiry_timestamp_seconds"))
        let left = expiry - Date().timeIntervalSince1970
        #expect(left > 2 * 86400 && left <= 3 * 86400 + 60, "\(left) s")
    }
}
