import Foundation
import LengthEcho
import LengthEchoCore
import LengthEchoTLS
import LengthEchoTestSupport
import NIOCore
import Testing

@Suite("TLS over real sockets and the system OpenSSL", .timeLimit(.minutes(2)))
struct TLSTests {
    private func tlsServer(
        _ certificates: TestCertificates,
        clientAuthentication: ClientAuthentication = .none,
        minimumVersion: TLSVersion = .tls12,
        configure: (inout ServerConfiguration) -> Void = { _ in }
    ) async throws -> LengthEchoServer {
        let context = certificates.serverSettings(
            clientAuthentication: clientAuthentication, minimumVersion: minimumVersion)
        return try await startServer {
            $0.tls = context
            configure(&$0)
        }
    }

    private func tlsClient(
        _ server: LengthEchoServer, _ context: TLSContext, host: String = "127.0.0.1", serverName: String? = nil
    )
        -> LengthEchoClient
    {
        var configuration = ClientConfiguration(host: host, port: server.port)
        configuration.tls = context
        configuration.serverName = serverName
        return LengthEchoClient(configuration: configuration)
    }

    @Test("round trips over TLS 1.2 and 1.3: small, 1 MiB, 1000 pipelined", arguments: [TLSVersion.tls12, .tls13])
    func roundTrips(version: TLSVersion) async throws {
        let certificates = try await TestCertificates.main.value
        let server = try await self.tlsServer(certificates)
        let client = self.tlsClient(server, try certificates.clientContext(maximumVersion: version))
        let info = try #require(try await client.connect())
        #expect(info.version == (version == .tls13 ? "TLSv1.3" : "TLSv1.2"))
        #expect(info.peerSubject?.contains("localhost") == true)
        #expect(try await client.send(bytes("test_string")).text == "11 : test_string")
        let big = (0..<(1 << 20)).map { UInt8(0x61 + $0 % 26) }
        #expect(try await client.send(big).length == 1 << 20)
        let mixed = [5, 70_000, 0, 17_000].map { size in (0..<size).map { UInt8(0x30 + $0 % 10) } }
        #expect(try await client.send(pipelined: mixed).map(\.length) == mixed.map(\.count))
        let messages = (0..<1000).map { bytes("pipelined \($0)") }
        let replies = try await client.send(pipelined: messages)
        #expect(replies.map(\.bytes) == messages.map { bytes("\($0.count) : ") + $0 })
        await client.close()
        await server.shutdown()
    }

    @Test("a client that reconnects resumes its TLS session", arguments: [TLSVersion.tls12, .tls13])
    func resumption(version: TLSVersion) async throws {
        let certificates = try await TestCertificates.main.value
        let server = try await self.tlsServer(certificates)
        let client = self.tlsClient(server, try certificates.clientContext(maximumVersion: version))
        #expect(try await client.send(bytes("first")).text == "5 : first")
        #expect(await client.tlsInfo?.resumed == false)
        await client.close()
        #expect(try await client.send(bytes("second")).text == "6 : second")
        #expect(await client.tlsInfo?.resumed == true)
        await client.close()
        await server.shutdown()
    }

    @Test("100 concurrent TLS clients with an RSA certificate, by address and by name")
    func concurrentClients() async throws {
        let certificates = try await TestCertificates.rsa.value
        let server = try await self.tlsServer(certificates)
        let context = try certificates.clientContext()
        let port = server.port
        try await withThrowingTaskGroup(of: Void.self) { group in
            for index in 0..<100 {
                group.addTask {
                    var configuration = ClientConfiguration(
                        host: index % 2 == 0 ? "127.0.0.1" : "localhost", port: port)
                    configuration.tls = context
                    let client = LengthEchoClient(configuration: configuration)
                    let message = "tls client \(index)"
                    let reply = try await client.send(bytes(message))
                    #expect(reply.text == "\(message.utf8.count) : \(message)")
                    await client.close()
                }
            }
            try await group.waitForAll()
        }
        await server.shutdown()
    }

    @Test("mutual TLS: accepted with a client certificate, refused without one or with another CA's")
    func mutualTLS() async throws {
        let certificates = try await TestCertificates.main.value
        let other = try await TestCertificates.other.value
        let server = try await self.tlsServer(certificates, clientAuthentication: .required)

        let good = self.tlsClient(server, try certificates.clientContext(withCertificate: true))
        #expect(try await good.send(bytes("with cert")).text == "9 : with cert")

        let anonymous = self.tlsClient(server, try certificates.clientContext())
        await #expect {
            _ = try await anonymous.send(bytes("no cert"))
        } throws: { error in
            "\(error)".contains("requires a client certificate")
        }

        // Over TLS 1.2 the server can only say "handshake failure"; the client still points at --cert.
        let anonymous12 = self.tlsClient(server, try certificates.clientContext(maximumVersion: .tls12))
        await #expect {
            _ = try await anonymous12.send(bytes("no cert"))
        } throws: { error in
            "\(error)".contains("may require a client certificate")
        }

        // A certificate from another CA; the client trusts the server's CA.
        let stranger = try TLSContext.client(
            trustRoots: .file(certificates.ca),
            certificateChain: other.clientCertificate,
            privateKey: other.clientKey
        )
        let strangerClient = self.tlsClient(server, stranger)
        await #expect {
            _ = try await strangerClient.send(bytes("wrong CA"))
        } throws: { error in
            "\(error)".contains("does not trust our client certificate")
        }

        // The server keeps serving.
        #expect(try await good.send(bytes("still here")).text == "10 : still here")
        await good.close()
        await server.shutdown()
    }

    @Test("verification failures say why: unknown CA, wrong host, expired")
    func verificationErrors() async throws {
        let certificates = try await TestCertificates.main.value
        let other = try await TestCertificates.other.value
        let server = try await self.tlsServer(certificates)

        await #expect {
            _ = try await self.tlsClient(server, try other.clientContext()).connect()
        } throws: { error in
            guard let error = error as? TLSError, case .verification = error.kind else { return false }
            return error.message.contains("unknown CA") && error.cause == .untrustedPeerCertificate
        }
        await #expect {
            _ = try await self.tlsClient(server, try certificates.clientContext(), serverName: "example.com").connect()
        } throws: { error in
            "\(error)".contains("wrong host") && "\(error)".contains("localhost, 127.0.0.1, ::1")
                && "\(error)".contains("example.com")
        }

        let expired = try await TestCertificates.expired.value
        let expiredServer = try await self.tlsServer(expired)
        await #expect {
            _ = try await self.tlsClient(expiredServer, try expired.clientContext()).connect()
        } throws: { error in
            "\(error)".contains("has expired")
        }

        // After all of that, the first server still answers.
        let client = self.tlsClient(server, try certificates.clientContext())
        #expect(try await client.send(bytes("ok")).text == "2 : ok")
        await client.close()
        await expiredServer.shutdown()
        await server.shutdown()
    }

    @Test("no TLS version in common is named as such")
    func noSharedVersion() async throws {
        let certificates = try await TestCertificates.main.value
        let server = try await self.tlsServer(certificates, minimumVersion: .tls13)
        await #expect {
            _ = try await self.tlsClient(server, try certificates.clientContext(maximumVersion: .tls12)).connect()
        } throws: { error in
            "\(error)".contains("no TLS version in common")
        }
        let modern = self.tlsClient(server, try certificates.clientContext())
        #expect(try await modern.connect()?.version == "TLSv1.3")
        await modern.close()
        await server.shutdown()
    }

    @Test("a plaintext client on a TLS port is told in plaintext; a TLS client on a plaintext port says so")
    func plaintextMixUps() async throws {
        let certificates = try await TestCertificates.main.value
        let tlsServer = try await self.tlsServer(certificates)
        let plaintextClient = LengthEchoClient(configuration: ClientConfiguration(port: tlsServer.port))
        await #expect {
            _ = try await plaintextClient.send(bytes("hello?"))
        } throws: { error in
            "\(error)".contains("this port speaks TLS")
        }

        let plainServer = try await startServer()
        await #expect {
            _ = try await self.tlsClient(plainServer, try certificates.clientContext()).connect()
        } throws: { error in
            (error as? TLSError)?.cause == .peerNotTLS && "\(error)".contains("did not speak TLS")
        }
        // Both servers keep serving.
        let tlsClient = self.tlsClient(tlsServer, try certificates.clientContext())
        #expect(try await tlsClient.send(bytes("fine")).text == "4 : fine")
        await tlsClient.close()
        let plain = LengthEchoClient(configuration: ClientConfiguration(port: plainServer.port))
        #expect(try await plain.send(bytes("fine")).text == "4 : fine")
        await plain.close()
        await plainServer.shutdown()
        await tlsServer.shutdown()
    }

    @Test("a peer that opens a connection and never starts the handshake is dropped")
    func handshakeTimeout() async throws {
        let certificates = try await TestCertificates.main.value
        let server = try await self.tlsServer(certificates) { $0.handshakeTimeout = .milliseconds(300) }
        let port = server.port
        try await blocking {
            let silent = try RawSocket.connect(port: port)
            #expect(try silent.readToEnd().isEmpty)
        }
        await server.shutdown()
    }

    @Test("bad files are clear errors: missing, key not matching, encrypted key, not PEM")
    func badFiles() async throws {
        let certificates = try await TestCertificates.main.value
        let other = try await TestCertificates.other.value
        func serverError(cert: String, key: String) -> String {
            do {
                _ = try TLSContext.server(certificateChain: cert, privateKey: key)
                return "no error"
            } catch {
                return error.description
            }
        }
        #expect(
            serverError(cert: "/nonexistent/server.pem", key: certificates.serverKey)
                == "cannot read certificate file /nonexistent/server.pem: No such file or directory")
        #expect(
            serverError(cert: certificates.serverCertificate, key: other.serverKey).contains(
                "does not match the certificate"))
        #expect(
            serverError(cert: certificates.serverKey, key: certificates.serverKey).contains(
                "cannot use certificate file"))

        let encrypted = certificates.directory + "/encrypted.key"
        let made = try run(
            "/usr/bin/env",
            ["openssl", "pkey", "-in", certificates.serverKey, "-aes256", "-passout", "pass:secret", "-out", encrypted])
        #expect(made.status == 0, "\(made.output)")
        #expect(
            serverError(cert: certificates.serverCertificate, key: encrypted).contains("is encrypted with a passphrase")
        )
    }

    @Test("a CA file without certificates is a clear error, for a server's client CA and for a client's trust")
    func caFileWithoutCertificates() async throws {
        let certificates = try await TestCertificates.main.value
        // A key is PEM, but holds no certificate.
        let notCA = certificates.serverKey
        do {
            _ = try TLSContext.server(
                certificateChain: certificates.serverCertificate, privateKey: certificates.serverKey,
                clientCA: notCA, clientAuthentication: .required)
            Issue.record("a server context was made with no client CA certificates")
        } catch {
            #expect(error.description.hasPrefix("cannot use client CA file \(notCA): "), "\(error)")
        }
        do {
            _ = try TLSContext.client(trustRoots: .file(notCA))
            Issue.record("a client context was made with no CA certificates")
        } catch {
            #expect(error.description.hasPrefix("cannot use CA file \(notCA): "), "\(error)")
        }
        #expect(throws: TLSError.self) { try TLSContext.client(trustRoots: .file("/nonexistent/ca.pem")) }
    }
}
