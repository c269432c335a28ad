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
        try await LengthEchoTests.sClient(
            port: port, ca: ca, sending: "test_string\\0second\\0", "-verify_return_error -quiet \(flags)",
            errors: false)
    }

    @Test(
        "openssl s_client -verify_return_error gets correct replies over TLS 1.2 and 1.3",
        arguments: ["-tls1_2", "-tls1_3"])
    func sClientGetsReplies(flag: String) async throws {
        let certificates = try await TestCertificates.main.value
        // The idle timeout closes the connection (with close_notify) once s_client has said everything.
        let server = try await startServerForSClient(certificates, idleTimeout: .milliseconds(1500))
        let result = try await self.sClient(port: server.port, ca: certificates.ca, "\(flag) -servername localhost")
        #expect(result.output == "11 : test_string\u{0}6 : second\u{0}")
        await server.shutdown()
    }

    @Test(
        "openssl s_client resumes its session with -sess_out, then -sess_in, over TLS 1.2 and 1.3",
        arguments: ["-tls1_2", "-tls1_3"])
    func sClientResumes(flag: String) async throws {
        let certificates = try await TestCertificates.main.value
        // The idle timeout ends each s_client (-ign_eof: it reads until the server closes, so a TLS 1.3 ticket,
        // which comes after the handshake, reaches it).
        let server = try await startServerForSClient(certificates, idleTimeout: .milliseconds(500))
        let session = FileManager.default.temporaryDirectory.appendingPathComponent("le-session-\(UUID()).pem").path
        defer { try? FileManager.default.removeItem(atPath: session) }
        let flags = "\(flag) -servername localhost -ign_eof"
        let first = try await LengthEchoTests.sClient(
            port: server.port, ca: certificates.ca, sending: "first\\0", "\(flags) -sess_out \(session)", errors: true)
        #expect(first.output.contains("New, TLSv1"), "\(first.output)")
        #expect(first.output.contains("5 : first\u{0}"))
        let second = try await LengthEchoTests.sClient(
            port: server.port, ca: certificates.ca, sending: "again\\0", "\(flags) -sess_in \(session)", errors: true)
        #expect(second.output.contains("Reused, TLSv1"), "\(second.output)")
        #expect(second.output.contains("5 : again\u{0}"))
        await server.shutdown()
    }

    @Test("openssl s_client -tls1_1 is refused with a protocol version alert")
    func tls11Refused() async throws {
        let certificates = try await TestCertificates.main.value
        let context = certificates.serverSettings()
        let server = try await startServer { $0.tls = context }
        // SECLEVEL=0 lets s_client itself offer TLS 1.1, so the refusal is our server's.
        let result = try await LengthEchoTests.sClient(
            port: server.port, ca: certificates.ca, sending: "", "-tls1_1 -cipher 'DEFAULT@SECLEVEL=0'", errors: true)
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

/// Our client against an `openssl s_server` driven by hand: what a real TLS 1.2 server may do mid-connection.
@Suite("A TLS 1.2 server that asks to renegotiate", .timeLimit(.minutes(1)))
struct RenegotiationTests {
    @Test("a HelloRequest never makes the client drop a message silently: it is refused, and the message answered")
    func helloRequest() async throws {
        let certificates = try await TestCertificates.main.value
        // Port 0: s_server says which it got (a port picked here and bound later could be taken meanwhile).
        let server = try Executable(
            "/usr/bin/openssl",
            [
                "s_server", "-accept", "127.0.0.1:0", "-tls1_2", "-cert", certificates.serverCertificate, "-key",
                certificates.serverKey, "-naccept", "1",
            ],
            keepStdinOpen: true
        )
        defer { server.terminate(signal: SIGKILL) }
        await server.wait { $0.stdout.contains("ACCEPT") || !$0.isRunning }
        let line = try #require(server.stdout.split(separator: "\n").first { $0.hasPrefix("ACCEPT") })
        let port = try #require(line.split(separator: ":").last.flatMap { Int($0) })
        var configuration = ClientConfiguration(port: port)
        configuration.framing = .line
        configuration.replyTimeout = .seconds(10)
        configuration.tls = try certificates.clientContext(maximumVersion: .tls12)
        configuration.serverName = "localhost"
        let client = LengthEchoClient(configuration: configuration)

        // Typed at s_server: it sends each line we give it, and prints what it receives.
        async let first = client.send(bytes("a"))
        await server.wait { $0.stdout.contains("\na\n") || !$0.isRunning }
        server.send("1 : a\n")
        #expect(try await first.text == "1 : a")

        server.send("r\n")  // s_server: renegotiate (a HelloRequest on TLS 1.2)
        await server.wait { $0.stdout.contains("SSL_renegotiate") || !$0.isRunning }
        let second = Task { () -> Result<EchoReply, any Error> in
            do { return .success(try await client.send(bytes("b"))) } catch { return .failure(error) }
        }
        await server.wait { $0.stdout.contains("\nb\n") || !$0.isRunning || $0.stderr.contains("error") }
        if server.stdout.contains("\nb\n") { server.send("1 : b\n") }
        switch await second.value {
        case .success(let reply):
            #expect(reply.text == "1 : b")
        case .failure(let error):
            // Refusing the renegotiation may end the connection; then the client says so at once.
            #expect(!(error is LengthEchoError && "\(error)".contains("no reply within")), "\(error)")
        }
        await client.close()
    }
}
