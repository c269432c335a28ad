import Foundation
import LengthEcho
import LengthEchoCore
import LengthEchoTLS
import LengthEchoTestSupport
import Testing

/// TLS policy for deployments: ALPN.
@Suite("TLS policy: ALPN", .timeLimit(.minutes(1)))
struct TLSPolicyTests {
    /// `openssl s_client` with `flags`, sending one message and closing; everything it printed.
    private func sClient(port: Int, ca: String, _ flags: String) async throws -> String {
        try await blocking {
            try run(
                "/bin/sh",
                [
                    "-c",
                    "printf 'alpn\\0' | timeout 10 openssl s_client -connect 127.0.0.1:\(port) -CAfile \(ca) "
                        + "-servername localhost \(flags) 2>&1",
                ]
            ).output
        }
    }

    @Test("--alpn-required: length-echo is agreed; a client offering only h2, or no ALPN, gets no_application_protocol")
    func required() async throws {
        let certificates = try await TestCertificates.main.value
        let (server, port) = try await startServerExecutable([
            "--tls", "--cert", certificates.serverCertificate, "--key", certificates.serverKey, "--alpn-required",
            "--quiet", "--log-format", "json",
        ])
        defer { server.terminate() }
        let agreed = try await self.sClient(port: port, ca: certificates.ca, "-alpn length-echo")
        #expect(agreed.contains("ALPN protocol: length-echo"), "\(agreed)")
        for flags in ["-alpn h2", ""] {
            let refused = try await self.sClient(port: port, ca: certificates.ca, flags)
            #expect(refused.contains("alert no application protocol"), "\(flags): \(refused)")
        }
        // Our client sends length-echo.
        var configuration = ClientConfiguration(port: port)
        configuration.tls = try certificates.clientContext()
        configuration.serverName = "localhost"
        let client = LengthEchoClient(configuration: configuration)
        #expect(try await client.connect()?.alpn == "length-echo")
        #expect(try await client.send(bytes("ours")).text == "4 : ours")
        await client.close()
        let lines = await waitForConnectionLines(server, count: 4)
        let details = lines.compactMap { $0["detail"] as? String }
        #expect(details.contains { $0.hasPrefix("TLS handshake failed: the client's ALPN did not offer length-echo") })
        #expect(details.contains { $0.hasPrefix("TLS handshake failed: the client sent no ALPN") })
        #expect(lines.filter { $0["alpn"] as? String == "length-echo" }.count == 2)
    }

    @Test("without --alpn-required a client offering something else, or nothing, is served without ALPN")
    func offered() async throws {
        let certificates = try await TestCertificates.main.value
        let context = try certificates.serverContext()
        let server = try await startServer {
            $0.tls = context
            $0.idleTimeout = .milliseconds(1500)
        }
        let other = try await self.sClient(port: server.port, ca: certificates.ca, "-alpn h2 -quiet")
        #expect(other.contains("4 : alpn"), "\(other)")
        let plain = try await self.sClient(port: server.port, ca: certificates.ca, "-ign_eof")
        #expect(plain.contains("No ALPN negotiated") && plain.contains("4 : alpn"), "\(plain)")
        await server.shutdown()
    }
}
