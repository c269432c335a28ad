import Foundation
import LengthEcho
import LengthEchoCore
import LengthEchoTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Where the balancers listen: a loopback address no other test binds, so a port picked here and bound by
/// HAProxy a moment later cannot meanwhile be taken by another test's server (which binds 127.0.0.1).
let frontendHost = "127.0.0.77"

/// A port for a balancer's frontend on `frontendHost`.
func freePort() throws -> Int {
    let (fd, port) = try bindLoopback()
    close(fd)
    return port
}

/// Runs `bench` to completion and returns its JSON result.
func runBench(_ arguments: [String]) async throws -> [String: Any] {
    let bench = try Executable("bench", arguments + ["--json", "--warmup", "0"])
    let status = await bench.exitStatus()
    try #require(status == 0, "bench failed: \(bench.stderr)")
    return try #require(
        try JSONSerialization.jsonObject(with: Data(bench.stdout.utf8)) as? [String: Any], "\(bench.stdout)")
}

func errors(_ result: [String: Any]) -> Int {
    (result["errors"] as? [String: Int] ?? [:]).values.reduce(0, +)
}

/// The scale-out deployment, for real: HAProxy (and nginx) in front of length-echo servers that each live in
/// a network namespace of their own, clients from two addresses. Each test makes its own namespaces, bridge
/// (a subnet of its own), balancer and ports, and removes them when it ends, so the tests run side by side; their
/// loads are paced (`bench --pause`), so they do not starve one another or the rest of the suite.
@Suite(
    "Behind HAProxy and nginx: three backends in their own network namespaces",
    .timeLimit(.minutes(2)),
    .enabled(if: HAProxy.path != nil || ProcessInfo.processInfo.environment["CI"] != nil, "haproxy is not installed"),
    // Heavy (a dozen processes under load): under a sanitizer it would starve the timing of every other test,
    // and the sanitizer learns nothing from HAProxy's side of it.
    .enabled(if: ProcessInfo.processInfo.environment["LENGTH_ECHO_SANITIZER"] == nil, "not under a sanitizer")
)
struct BalancerTests {
    /// The backend section: round robin over the backends, PROXY v2 to each, health checks in the protocol
    /// itself (a message, its exact reply) that speak PROXY too; down after 2 failed checks 200 ms apart.
    static func backendSection(_ name: String, _ backends: [Backend], extra: String = "") -> String {
        """
        backend \(name)
            balance roundrobin
            option tcp-check
            tcp-check send-binary 636865636b00
            tcp-check expect binary 35203a20636865636b00
            default-server send-proxy-v2 check check-send-proxy inter 200ms fall 2 rise 2 \(extra)
        \(backends.map { "    server b\($0.index) \($0.address):\($0.port)" }.joined(separator: "\n"))
        """
    }

    static func waitUntilUp(_ haproxy: HAProxy, _ backend: String, _ backends: [Backend]) async throws {
        for server in backends {
            let up = await haproxy.waitForLog("Health check for server \(backend)/b\(server.index) succeeded")
            try #require(up, "b\(server.index) never passed its check: \(haproxy.process.stdout)")
        }
    }

    @Test(
        "PROXY v2 from HAProxy: checks pass, load spreads over 3 backends, each logs the real client; bad peers refused"
    )
    func scaleOut() async throws {
        let network = try BackendNetwork(backends: 3)
        defer { network.tearDown() }
        var backends: [Backend] = []
        for index in 0..<3 { backends.append(try await Backend(network, index: index)) }
        defer { for backend in backends { backend.stop(signal: SIGKILL) } }
        let port = try freePort()
        let haproxy = try await HAProxy(
            """
            frontend fe
                bind \(frontendHost):\(port)
                default_backend be
            \(Self.backendSection("be", backends))
            """)
        defer { haproxy.stop() }
        try await Self.waitUntilUp(haproxy, "be", backends)

        // Two client addresses through the balancer.
        let result = try await runBench([
            "--host", frontendHost, "--port", "\(port)", "--source", "127.0.0.1", "--source", "127.0.0.2", "--mode",
            "per-request", "-c", "4",
            "--threads", "1", "-n", "120",
        ])
        #expect(result["requests"] as? Int == 120, "\(result)")
        #expect(errors(result) == 0, "\(result)")

        for backend in backends {
            await backend.process.wait(seconds: 10) { connectionLines($0).count >= 10 || !$0.isRunning }
            let clients = backend.lines.filter { ($0["peer"] as? String)?.hasPrefix("127.0.0.") == true }
            #expect(clients.count >= 10, "backend \(backend.index) got \(clients.count) of 120 requests")
            let peers = Set(
                clients.compactMap { ($0["peer"] as? String)?.split(separator: ":").first.map(String.init) })
            #expect(peers == ["127.0.0.1", "127.0.0.2"], "backend \(backend.index) saw \(peers)")
            #expect(
                clients.allSatisfy { ($0["via"] as? String)?.hasPrefix(network.balancerAddress + ":") == true },
                "HAProxy's own address is kept as `via`")
            #expect(clients.allSatisfy { $0["end"] as? String == "client-closed" })
        }

        // Straight to a backend, around the balancer: no header, a header from an untrusted address, a
        // malformed header. Each is closed without a word and logged; the backend goes on serving.
        let target = backends[0]
        let outcomes = try await blocking { () -> [[UInt8]] in
            var outcomes: [[UInt8]] = []
            for (source, sent) in [
                (network.balancerAddress, bytes("hello") + [0]),
                (network.outsiderAddress, ProxyProtocolServerTests.v1 + bytes("hello") + [0]),
                (network.balancerAddress, bytes("PROXY TCP9 1.2.3.4 5.6.7.8 1 2\r\nhello") + [0]),
            ] {
                let socket = try RawSocket.connect(host: target.address, port: target.port, source: source)
                try socket.write(sent)
                outcomes.append(try socket.readUntilClosed())
            }
            return outcomes
        }
        #expect(outcomes == [[], [], []])
        await target.process.wait(seconds: 10) {
            connectionLines($0).filter { $0["end"] as? String == "proxy-refused" }.count >= 3 || !$0.isRunning
        }
        let refused = target.lines.filter { $0["end"] as? String == "proxy-refused" }
        #expect(
            refused.compactMap { $0["detail"] as? String }.sorted() == [
                "PROXY v1 line: unknown protocol (TCP4, TCP6 or UNKNOWN expected)",
                "the connection came from an address not trusted to send PROXY headers",
                "the connection did not begin with a PROXY protocol header",
            ])
        #expect(refused.contains { ($0["peer"] as? String)?.hasPrefix(network.outsiderAddress + ":") == true })
        let after = try await runBench([
            "--host", frontendHost, "--port", "\(port)", "--mode", "per-request", "-c", "3", "--threads", "1", "-n",
            "30",
        ])
        #expect(errors(after) == 0 && haproxy.logCount(" is DOWN") == 0, "\(after)")
    }

    @Test("kill -9 of a backend under load fails nothing once it is marked down; a rolling restart fails nothing")
    func failover() async throws {
        let network = try BackendNetwork(backends: 3)
        defer { network.tearDown() }
        var backends: [Backend] = []
        // Tens of thousands of requests: their connection lines are not what this test reads.
        for index in 0..<3 {
            backends.append(try await Backend(network, index: index, flags: ["--log-level", "notice"]))
        }
        defer { for backend in backends { backend.stop(signal: SIGKILL) } }
        let (port, single) = (try freePort(), try freePort())
        let haproxy = try await HAProxy(
            """
            frontend fe
                bind \(frontendHost):\(port)
                default_backend be
            \(Self.backendSection("be", backends))
            listen single
                bind \(frontendHost):\(single)
                server b2 \(backends[2].address):4000 send-proxy-v2
            """)
        defer { haproxy.stop() }
        try await Self.waitUntilUp(haproxy, "be", backends)
        let load = [
            "--host", frontendHost, "--port", "\(port)", "--source", "127.0.0.1", "--source", "127.0.0.2", "-c", "6",
            "--threads", "1",
            "--reply-timeout", "5",
            // Paced, about 600 requests a second in all: enough to be under load through every kill and restart,
            // not so much that the rest of the suite starves beside it.
            "--pause", "10",
        ]

        // kill -9 under load: HAProxy's next checks fail (2 of them, 200 ms apart), it marks the backend down.
        let killed = try Executable(
            "bench", load + ["--mode", "per-request", "--duration", "3", "--json", "--warmup", "0"])
        // Once the load has run a second (bench reports progress once a second), b0 goes.
        await killed.wait(seconds: 10) { $0.stderr.contains("requests/s") || !$0.isRunning }
        let killedAt = Date()
        backends[0].stop(signal: SIGKILL)
        let down = await haproxy.waitForLog("Server be/b0 is DOWN")
        let detection = Date().timeIntervalSince(killedAt)
        #expect(down, "HAProxy never marked the killed backend down")
        #expect(detection < 2, "detected after \(detection) s; 2 checks 200 ms apart should take about 0.4 s")
        #expect(await killed.exitStatus() == 0, "\(killed.stderr)")
        let during = try #require(try JSONSerialization.jsonObject(with: Data(killed.stdout.utf8)) as? [String: Any])
        print(
            "BalancerTests: kill -9 of one of 3 backends under per-request load: detected in \(detection) s; \(during)")
        #expect(errors(during) == 0, "requests failed across the kill: \(during)")
        // It comes back: HAProxy's checks see it and send it traffic again.
        try await backends[0].restart()
        #expect(await haproxy.waitForLog("Server be/b0 is UP"))

        // Rolling restart under load: each backend in turn is drained in HAProxy, stopped with SIGTERM (its own
        // drain), started again, and made ready.
        // The load runs until the last backend is back (bench stops at SIGINT and reports what it measured).
        let rolling = try Executable(
            "bench", load + ["--mode", "persistent", "--duration", "60", "--json", "--warmup", "0"])
        for backend in backends {
            #expect(
                try haproxy.admin("set server be/b\(backend.index) state drain").trimmingCharacters(
                    in: .whitespacesAndNewlines
                ).isEmpty)
            let downs = haproxy.logCount("Server be/b\(backend.index) is DOWN")
            backend.stop()
            #expect(await backend.process.exitStatus() == 0)
            #expect(await haproxy.waitForLog("Server be/b\(backend.index) is DOWN", count: downs + 1))
            try await backend.restart()
            #expect(await haproxy.waitForLog("Server be/b\(backend.index) is UP", count: downs + 1))
            _ = try haproxy.admin("set server be/b\(backend.index) state ready")
        }
        rolling.terminate(signal: SIGINT)
        #expect(await rolling.exitStatus() == 0, "\(rolling.stderr)")
        let restarts = try #require(try JSONSerialization.jsonObject(with: Data(rolling.stdout.utf8)) as? [String: Any])
        print("BalancerTests: rolling restart of 3 backends under persistent load: \(restarts)")
        #expect(errors(restarts) == 0, "requests failed during the rolling restart: \(restarts)")
        #expect((restarts["requests"] as? Int ?? 0) > 100)

        // A message half-sent through the balancer when its backend gets SIGTERM is still answered.
        let socket = try await blocking { () -> RawSocket in
            let socket = try RawSocket.connect(host: frontendHost, port: single)
            try socket.write(bytes("first") + [0])
            #expect(try socket.readReplyText() == "5 : first")
            try socket.write(bytes("half a "))
            return socket
        }
        backends[2].stop()
        // The drain has begun (the backend says so); the rest of the message arrives within it.
        await backends[2].process.wait(seconds: 10) { $0.stderr.contains("draining") || !$0.isRunning }
        let reply = try await blocking {
            try socket.write(bytes("message") + [0])
            return try socket.readReplyText()
        }
        #expect(reply == "14 : half a message")
        #expect(await backends[2].process.exitStatus() == 0)
    }

    @Test(
        "TLS: HAProxy terminating in front of plaintext backends, and passing it through (PROXY v2 first) to a backend that enforces mutual TLS; nginx stream with PROXY v1"
    )
    func tlsAndNginx() async throws {
        let certificates = try await TestCertificates.main.value
        let network = try BackendNetwork(backends: 2)
        defer { network.tearDown() }
        let plain = try await Backend(network, index: 0)
        defer { plain.stop(signal: SIGKILL) }
        let mutual = try await Backend(
            network, index: 1, port: 4443,
            flags: [
                "--tls", "--cert", certificates.serverCertificate, "--key", certificates.serverKey, "--client-ca",
                certificates.ca, "--client-auth", "required",
            ])
        defer { mutual.stop(signal: SIGKILL) }
        // HAProxy wants the certificate and its key in one file.
        let combined = NSTemporaryDirectory() + "length-echo-haproxy-\(getpid())-combined.pem"
        try
            (String(contentsOfFile: certificates.serverCertificate, encoding: .utf8)
            + String(contentsOfFile: certificates.serverKey, encoding: .utf8)).write(
                toFile: combined, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: combined) }
        let (terminating, passing, viaNginx) = (try freePort(), try freePort(), try freePort())
        let haproxy = try await HAProxy(
            """
            frontend terminating
                bind \(frontendHost):\(terminating) ssl crt \(combined)
                default_backend be
            \(Self.backendSection("be", [plain]))
            listen passthrough
                bind \(frontendHost):\(passing)
                server b1 \(mutual.address):4443 send-proxy-v2
            """)
        defer { haproxy.stop() }
        try await Self.waitUntilUp(haproxy, "be", [plain])
        let tlsClient = { (port: Int, withCertificate: Bool) throws -> Executable in
            try Executable(
                "client",
                [
                    "--host", frontendHost, "--server-name", "localhost", "--port", "\(port)", "--tls", "--ca",
                    certificates.ca,
                ]
                    + (withCertificate
                        ? ["--cert", certificates.clientCertificate, "--key", certificates.clientKey] : [])
                    + ["over TLS"])
        }

        // Terminated at HAProxy: the backend speaks plaintext, and sees the client, not HAProxy.
        let terminated = try tlsClient(terminating, false)
        #expect(await terminated.exitStatus() == 0, "\(terminated.stderr)")
        #expect(terminated.stdout == "8 : over TLS\n")
        await plain.process.wait(seconds: 10) { connectionLines($0).contains { $0["messages"] as? Int == 1 } }
        let plainLine = try #require(plain.lines.first { ($0["peer"] as? String)?.hasPrefix("127.0.0.1:") == true })
        #expect(
            plainLine["tls_version"] == nil && (plainLine["via"] as? String)?.hasPrefix(network.balancerAddress) == true
        )

        // Passed through: TLS end to end after the PROXY header; length-echo still enforces mutual TLS.
        let passed = try tlsClient(passing, true)
        #expect(await passed.exitStatus() == 0, "\(passed.stderr)")
        #expect(passed.stdout == "8 : over TLS\n")
        let refused = try tlsClient(passing, false)
        #expect(await refused.exitStatus() != 0)
        #expect(refused.stderr.contains("certificate"), "\(refused.stderr)")
        await mutual.process.wait(seconds: 10) { connectionLines($0).count >= 2 }
        let mutualLines = mutual.lines
        #expect(mutualLines.allSatisfy { ($0["peer"] as? String)?.hasPrefix("127.0.0.1:") == true }, "\(mutualLines)")
        #expect(mutualLines.allSatisfy { ($0["via"] as? String)?.hasPrefix(network.balancerAddress) == true })
        let served = try #require(mutualLines.first { $0["end"] as? String == "client-closed" }, "\(mutualLines)")
        #expect(
            served["tls_version"] as? String == "TLSv1.3"
                && (served["client_subject"] as? String)?.contains("CN") == true)
        #expect(mutualLines.contains { $0["end"] as? String == "handshake-failed" })

        // nginx `stream` with `proxy_protocol on` (v1), from a second client address.
        let nginx = try await Nginx(
            stream: """
                server {
                    listen \(frontendHost):\(viaNginx);
                    proxy_pass \(plain.address):4000;
                    proxy_protocol on;
                }
                """)
        defer { nginx.stop() }
        let result = try await runBench([
            "--host", frontendHost, "--port", "\(viaNginx)", "--source", "127.0.0.2", "--mode", "per-request", "-c",
            "2", "--threads", "1",
            "-n", "10",
        ])
        #expect(result["requests"] as? Int == 10 && errors(result) == 0, "\(result)")
        await plain.process.wait(seconds: 10) {
            connectionLines($0).filter { ($0["peer"] as? String)?.hasPrefix("127.0.0.2:") == true }.count >= 10
        }
        #expect(plain.lines.filter { ($0["peer"] as? String)?.hasPrefix("127.0.0.2:") == true }.count == 10)
    }
}
