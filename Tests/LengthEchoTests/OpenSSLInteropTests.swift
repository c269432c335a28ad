import Foundation
import LengthEcho
import LengthEchoCore
import LengthEchoTLS
import LengthEchoTestSupport
import Testing

/// Our server and client against the real `openssl` tool, which is what users would otherwise reach for.
@Suite("Interoperation with the openssl command", .timeLimit(.minutes(1)))
struct OpenSSLInteropTests {
    /// `openssl s_client` sending the protocol's bytes, its stdout and exit status.
    private func sClient(port: Int, ca: String, _ flags: String) async throws -> (status: Int32, output: String) {
        try await blocking {
            try run(
                "/bin/sh",
                [
                    "-c",
                    "printf 'test_string\\0second\\0' | timeout 10 openssl s_client -connect 127.0.0.1:\(port) "
                        + "-CAfile \(ca) -verify_return_error -quiet \(flags) 2>/dev/null",
                ])
        }
    }

    @Test(
        "openssl s_client -verify_return_error gets correct replies over TLS 1.2 and 1.3",
        arguments: ["-tls1_2", "-tls1_3"])
    func sClientGetsReplies(flag: String) async throws {
        let certificates = try await TestCertificates.main.value
        let context = try certificates.serverContext()
        // The idle timeout closes the connection (with close_notify) once s_client has said everything.
        let server = try await startServer {
            $0.tls = context
            $0.idleTimeout = .milliseconds(1500)
        }
        let result = try await self.sClient(port: server.port, ca: certificates.ca, "\(flag) -servername localhost")
        #expect(result.output == "11 : test_string\u{0}6 : second\u{0}")
        await server.shutdown()
    }

    @Test("openssl s_client -tls1_1 is refused with a protocol version alert")
    func tls11Refused() async throws {
        let certificates = try await TestCertificates.main.value
        let context = try certificates.serverContext()
        let server = try await startServer { $0.tls = context }
        let port = server.port
        // SECLEVEL=0 lets s_client itself offer TLS 1.1, so the refusal is our server's.
        let result = try await blocking {
            try run(
                "/bin/sh",
                [
                    "-c",
                    "timeout 10 openssl s_client -connect 127.0.0.1:\(port) -tls1_1 -cipher 'DEFAULT@SECLEVEL=0' </dev/null 2>&1",
                ])
        }
        #expect(result.status != 0)
        #expect(result.output.contains("alert protocol version"), "\(result.output)")
        await server.shutdown()
    }

    @Test("our client completes a verified handshake with openssl s_server")
    func clientAgainstSServer() async throws {
        let certificates = try await TestCertificates.main.value
        let sServer = try Executable(
            "/usr/bin/openssl",
            [
                "s_server", "-accept", "127.0.0.1:0", "-cert", certificates.serverCertificate,
                "-key", certificates.serverKey, "-naccept", "1",
            ], keepStdinOpen: true)  // s_server stops when its stdin ends
        await sServer.wait { $0.stdout.contains("ACCEPT") || !$0.isRunning }
        let line = try #require(sServer.stdout.split(separator: "\n").first { $0.hasPrefix("ACCEPT") })
        let port = try #require(line.split(separator: ":").last.flatMap { Int($0) })
        var configuration = ClientConfiguration(host: "127.0.0.1", port: port)
        configuration.tls = try certificates.clientContext()
        let client = LengthEchoClient(configuration: configuration)
        let info = try #require(try await client.connect())
        #expect(info.version == "TLSv1.3")
        #expect(info.peerSubject?.contains("localhost") == true)
        await client.close()
        sServer.terminate()
        _ = await sServer.exitStatus()
    }
}
