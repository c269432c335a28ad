import Foundation
import LengthEchoCore
import LengthEchoTestSupport
import NIOCore
import Testing

@testable import LengthEcho
@testable import LengthEchoTLS

/// The one line the server logs when a connection ends.
@Suite("One line per connection", .timeLimit(.minutes(1)))
struct ConnectionLogTests {
    @Test("TLS: version, cipher, resumption and the client certificate's subject, counts, duration, why it ended")
    func tls() async throws {
        let certificates = try await TestCertificates.main.value
        let (server, port) = try await startServerExecutable([
            "--tls", "--cert", certificates.serverCertificate, "--key", certificates.serverKey,
            "--client-ca", certificates.ca, "--client-auth", "required", "--log-format", "json", "--quiet",
        ])
        defer { server.terminate() }
        var configuration = ClientConfiguration(port: port)
        configuration.tls = try certificates.clientContext(withCertificate: true)
        let client = LengthEchoClient(configuration: configuration)
        #expect(try await client.send(bytes("one")).text == "3 : one")
        #expect(try await client.send(bytes("three")).text == "5 : three")
        await client.close()
        let line = try #require(await waitForConnectionLines(server, count: 1).first)
        #expect((line["peer"] as? String)?.hasPrefix("127.0.0.1:") == true)
        #expect(line["tls_version"] as? String == "TLSv1.3")
        #expect((line["cipher"] as? String)?.hasPrefix("TLS_") == true)
        #expect(line["resumed"] as? Bool == false)
        #expect((line["client_subject"] as? String)?.contains("CN = ") == true)
        #expect(line["messages"] as? Int == 2)
        #expect(line["bytes_in"] as? Int == 10, "\"one\\0three\\0\"")
        #expect(line["bytes_out"] as? Int == 18, "\"3 : one\\0\" and \"5 : three\\0\"")
        #expect((line["duration_s"] as? Double).map { $0 >= 0 && $0 < 30 } == true)
        #expect(line["end"] as? String == "client-closed")
        #expect(line["time"] is String && line["level"] as? String == "info")
    }

    @Test("a line with every field has them in the order of the field names, which the log handler sorts by")
    func fieldOrder() throws {
        let address = try SocketAddress(ipAddress: "127.0.0.1", port: 1)
        let summary = ConnectionSummary(
            peer: address, via: address,
            tls: TLSConnectionInfo(
                version: "TLSv1.3", cipher: "TLS_AES_128_GCM_SHA256", resumed: false, alpn: "length-echo",
                peerSubject: "CN = c", peerNotAfter: nil),
            messages: 1, bytesIn: 2, bytesOut: 3, duration: .milliseconds(4), end: .clientClosed, detail: "d",
            isHealthCheck: false)
        var names: [String] = []
        summary.forEachField { name, _ in names.append(name) }
        #expect(names == ConnectionSummary.fieldNames)
    }

    @Test("a failed handshake and a plaintext client on the TLS port say so")
    func handshakeFailures() async throws {
        let certificates = try await TestCertificates.main.value
        let other = try await TestCertificates.other.value
        let (server, port) = try await startServerExecutable([
            "--tls", "--cert", certificates.serverCertificate, "--key", certificates.serverKey,
            "--client-ca", certificates.ca, "--client-auth", "required", "--log-format", "json",
        ])
        defer { server.terminate() }
        var configuration = ClientConfiguration(port: port)
        configuration.tls = try other.clientContext(withCertificate: true)  // trusts another CA
        let client = LengthEchoClient(configuration: configuration)
        await #expect(throws: (any Error).self) { try await client.send(bytes("x")) }
        await client.close()
        _ = try await blocking {
            let plain = try RawSocket.connect(port: port)
            try plain.write(bytes("hello") + [0])
            return try plain.readUntilClosed()
        }
        let lines = await waitForConnectionLines(server, count: 2)
        let ends = Set(lines.compactMap { $0["end"] as? String })
        #expect(ends == ["handshake-failed", "not-tls"])
        // Each is said once, in its connection line: the TLS layer logs nothing of its own.
        server.terminate()
        _ = await server.exitStatus()
        let perConnection = server.stderr.split(separator: "\n").filter { $0.contains("\"peer\"") }
        #expect(perConnection.count == 2, "\(server.stderr)")
    }

    @Test("text format: readable, the reason last, a peer's string quoted so it cannot forge a field")
    func text() async throws {
        let (server, port) = try await startServerExecutable(["--idle-timeout", "0.3", "--quiet"])
        defer { server.terminate() }
        let closed = try await blocking { () -> Bool in
            let socket = try RawSocket.connect(port: port)
            try socket.write(bytes("hi") + [0])
            _ = try socket.readReply()
            return socket.waitForPeerClose(seconds: 5)
        }
        #expect(closed)
        await server.wait { $0.stderr.contains("connection ended") || !$0.isRunning }
        let line = try #require(server.stderr.split(separator: "\n").first { $0.contains("connection ended") })
        // 2026-11-25T20:13:00.123Z info connection ended peer=127.0.0.1:40000 messages=1 ... end=idle
        let pattern =
            #/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z info connection ended peer=127\.0\.0\.1:\d+ messages=1 bytes_in=3 bytes_out=7 duration_s=\d+\.\d{3} end=idle$/#
        #expect(line.wholeMatch(of: pattern) != nil, "\(line)")
    }

    @Test("an error line counts in bytes_out; a TLS ClientHello on the plaintext port is told so, not echoed")
    func errorLines() async throws {
        let (server, port) = try await startServerExecutable(["--max-message", "8", "--quiet", "--log-format", "json"])
        defer { server.terminate() }
        let (tooLarge, hello) = try await blocking { () -> ([UInt8], [UInt8]) in
            let socket = try RawSocket.connect(port: port)
            try socket.write(bytes("123456789") + [0])
            let tooLarge = try socket.readUntilClosed()
            // The start of a TLS 1.2 ClientHello record: handshake, TLS 1.0 record version, a length, ClientHello.
            let tls = try RawSocket.connect(port: port)
            try tls.write(
                [0x16, 0x03, 0x01, 0x00, 0x2f, 0x01, 0x00, 0x00, 0x2b, 0x03, 0x03] + [UInt8](repeating: 0, count: 40))
            return (tooLarge, try tls.readUntilClosed())
        }
        let text = String(decoding: hello, as: UTF8.self)
        #expect(text.hasPrefix("error: this port speaks plaintext, not TLS"), "\(Escaping.printable(hello))")
        #expect(hello.allSatisfy { $0 >= 0x20 && $0 < 0x7f || $0 == 0 }, "nothing of the ClientHello echoed")
        let lines = await waitForConnectionLines(server, count: 2)
        let large = try #require(lines.first { $0["end"] as? String == "too-large" })
        #expect(large["bytes_out"] as? Int == tooLarge.count, "\(large)")
        let tlsLine = try #require(lines.first { $0["end"] as? String != "too-large" })
        #expect(tlsLine["end"] as? String == "not-plaintext", "\(tlsLine)")
    }

    @Test("a client that refuses the server's certificate for its name: the server's line does not blame the CA")
    func wrongNameRefusal() async throws {
        let certificates = try await TestCertificates.main.value
        let (server, port) = try await startServerExecutable([
            "--tls", "--cert", certificates.serverCertificate, "--key", certificates.serverKey, "--quiet",
            "--log-format", "json",
        ])
        defer { server.terminate() }
        let refused = try await sClient(
            port: port, ca: certificates.ca, sending: "", "-verify_return_error -verify_hostname not-this.example",
            errors: true)
        #expect(refused.status != 0)
        let line = try #require(await waitForConnectionLines(server, count: 1).first)
        let detail = line["detail"] as? String ?? ""
        #expect(detail.contains("the client refused our certificate"), "\(line)")
        #expect(!detail.contains("needs the CA"), "\(line)")
    }
}
