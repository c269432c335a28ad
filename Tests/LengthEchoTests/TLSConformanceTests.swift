import Foundation
import LengthEcho
import LengthEchoCore
import LengthEchoTLS
import LengthEchoTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// What RFC 8446, RFC 5077/8446 tickets and RFC 7301 ask of a TLS server, checked against the real
/// `openssl s_client` and raw records: where `openssl s_server` and nginx on the same OpenSSL behave so, ours must.
@Suite("TLS conformance: tickets, ALPN, first records, session IDs, client identity", .timeLimit(.minutes(2)))
struct TLSConformanceTests {
    private func session() -> String {
        FileManager.default.temporaryDirectory.appendingPathComponent("le-session-\(UUID()).pem").path
    }

    @Test("TLS 1.3: a resumed handshake gets a fresh ticket (RFC 8446 C.4: clients use each ticket once)")
    func ticketAfterResumption() async throws {
        let certificates = try await TestCertificates.main.value
        let server = try await startServerForSClient(certificates, idleTimeout: .milliseconds(500))
        let (first, second) = (self.session(), self.session())
        defer { for file in [first, second] { try? FileManager.default.removeItem(atPath: file) } }
        let flags = "-tls1_3 -servername localhost -ign_eof -msg"
        let full = try await sClient(
            port: server.port, ca: certificates.ca, sending: "a\\0", "\(flags) -sess_out \(first)", errors: true)
        #expect(full.output.contains("NewSessionTicket"), "\(full.output)")
        let resumed = try await sClient(
            port: server.port, ca: certificates.ca, sending: "b\\0",
            "\(flags) -sess_in \(first) -sess_out \(second)", errors: true)
        #expect(resumed.output.contains("Reused, TLSv1.3"), "\(resumed.output)")
        #expect(resumed.output.contains("NewSessionTicket"), "no ticket after resumption: \(resumed.output)")
        // The fresh ticket resumes too.
        let again = try await sClient(
            port: server.port, ca: certificates.ca, sending: "c\\0", "\(flags) -sess_in \(second)", errors: true)
        #expect(again.output.contains("Reused, TLSv1.3"), "\(again.output)")
        await server.shutdown()
    }

    @Test("ALPN (RFC 7301 3.2): a list without length-echo gets no_application_protocol; no ALPN at all is served")
    func alpnWithoutOurs() async throws {
        let certificates = try await TestCertificates.main.value
        let server = try await startServerForSClient(certificates, idleTimeout: .milliseconds(1500))
        let other = try await sClient(
            port: server.port, ca: certificates.ca, sending: "x\\0", "-servername localhost -alpn h2,http/1.1",
            errors: true)
        #expect(other.output.contains("alert no application protocol"), "\(other.output)")
        let ours = try await sClient(
            port: server.port, ca: certificates.ca, sending: "x\\0",
            "-servername localhost -alpn h2,length-echo -quiet",
            errors: true)
        #expect(ours.output.contains("1 : x"), "\(ours.output)")
        let none = try await sClient(
            port: server.port, ca: certificates.ca, sending: "x\\0", "-servername localhost -ign_eof", errors: true)
        #expect(none.output.contains("No ALPN negotiated") && none.output.contains("1 : x"), "\(none.output)")
        await server.shutdown()
    }

    /// What the server answers to `first` sent as the first bytes of a connection, up to its close.
    private func answer(to first: [UInt8], port: Int) async throws -> [UInt8] {
        try await blocking {
            let socket = try RawSocket.connect(port: port)
            try socket.write(first)
            return try socket.readUntilClosed()
        }
    }

    @Test("a first record that is TLS but not a ClientHello gets a TLS alert; printable text gets the plaintext hint")
    func firstRecords() async throws {
        let certificates = try await TestCertificates.main.value
        let context = certificates.serverSettings()
        let server = try await startServer { $0.tls = context }
        let changeCipherSpec: [UInt8] = [0x14, 0x03, 0x03, 0x00, 0x01, 0x01]
        let applicationData: [UInt8] = [0x17, 0x03, 0x03, 0x00, 0x05, 1, 2, 3, 4, 5]
        // An SSLv2-format ClientHello (version 3.3, one cipher spec, a 16-byte challenge), as old scanners send.
        let sslv2: [UInt8] =
            [0x80, 0x19 + 3, 0x01, 0x03, 0x03, 0x00, 0x03, 0x00, 0x00, 0x00, 0x10, 0x00, 0xc0, 0x2f]
            + [UInt8](repeating: 7, count: 16)
        for (name, first) in [
            ("ChangeCipherSpec", changeCipherSpec), ("ApplicationData", applicationData), ("SSLv2", sslv2),
        ] {
            let reply = try await self.answer(to: first, port: server.port)
            #expect(reply.first == 0x15, "\(name): \(Escaping.printable(reply))")  // an alert record
            #expect(!String(decoding: reply, as: UTF8.self).contains("error:"), "\(name)")
        }
        let text = try await self.answer(to: bytes("hello\u{0}"), port: server.port)
        #expect(String(decoding: text, as: UTF8.self).hasPrefix("error: this port speaks TLS"))
        await server.shutdown()
    }

    @Test("TLS 1.2 without tickets: a client that closes without close_notify still resumes by session ID")
    func sessionIDAfterAbruptClose() async throws {
        let certificates = try await TestCertificates.main.value
        let server = try await startServerForSClient(certificates, idleTimeout: .seconds(5))
        let session = self.session()
        defer { try? FileManager.default.removeItem(atPath: session) }
        // s_client writes the session once the handshake is done; then it is killed: TCP FIN, no close_notify.
        let abrupt = try Executable(
            "/usr/bin/openssl",
            [
                "s_client", "-connect", "127.0.0.1:\(server.port)", "-CAfile", certificates.ca, "-tls1_2",
                "-no_ticket", "-servername", "localhost", "-sess_out", session,
            ], keepStdinOpen: true)
        await abrupt.wait(seconds: 10) { $0.stdout.contains("Verify return code") || !$0.isRunning }
        #expect(abrupt.stdout.contains("New, TLSv1.2"), "\(abrupt.stdout)")
        abrupt.terminate(signal: SIGKILL)
        _ = await abrupt.exitStatus()
        let resumed = try await sClient(
            port: server.port, ca: certificates.ca, sending: "",
            "-tls1_2 -no_ticket -servername localhost -sess_in \(session)",
            errors: true)
        #expect(resumed.output.contains("Reused, TLSv1.2"), "\(resumed.output)")
        await server.shutdown()
    }

    @Test("--client-auth optional with an allow list: a client that sends no certificate is refused")
    func optionalWithAllowList() async throws {
        let certificates = try await TestCertificates.main.value
        var context = certificates.serverSettings(clientAuthentication: .optional)
        context.allowedClients = IdentityPolicy(commonNames: ["length-echo client"])
        let server = try await startServer { $0.tls = context }
        for version in [TLSVersion.tls13, .tls12] {
            var configuration = ClientConfiguration(port: server.port)
            configuration.serverName = "localhost"
            configuration.tls = try certificates.clientContext(withCertificate: true, maximumVersion: version)
            let allowed = LengthEchoClient(configuration: configuration)
            #expect(try await allowed.send(bytes("me")).text == "2 : me", "\(version)")
            await allowed.close()
            configuration.tls = try certificates.clientContext(maximumVersion: version)
            let anonymous = LengthEchoClient(configuration: configuration)
            await #expect(throws: (any Error).self, "\(version)") { _ = try await anonymous.send(bytes("nobody")) }
            await anonymous.close()
        }
        await server.shutdown()
    }
}

@Suite("Client identities: a leaf, with one common name", .timeLimit(.minutes(1)))
struct ClientLeafTests {
    @Test("a CA certificate offered as a client's is refused; so is a certificate with two CNs, one of them allowed")
    func leafOnly() async throws {
        let certificates = try TestCertificates.generate("leaf-only")
        let directory = certificates.directory
        // A client certificate with two CN attributes, the allowed one second, signed by the same CA.
        let made = try run(
            "/bin/sh",
            [
                "-c",
                "cd \(directory) && openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout two.key "
                    + "-subj '/CN=someone else/CN=length-echo client' -out two.csr 2>&1 && printf 'extendedKeyUsage = clientAuth\\n' > two.ext "
                    + "&& openssl x509 -req -in two.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile two.ext -out two.pem 2>&1"
                    // A sub-CA (CA:TRUE, no key usage limits) named as an allowed client.
                    + " && openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout sub.key "
                    + "-subj '/CN=length-echo client' -out sub.csr 2>&1 && printf 'basicConstraints = critical,CA:TRUE\\n' > sub.ext "
                    + "&& openssl x509 -req -in sub.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile sub.ext -out sub.pem 2>&1",
            ])
        #expect(made.status == 0, "\(made.output)")
        var context = certificates.serverSettings(clientAuthentication: .required)
        context.allowedClients = IdentityPolicy(commonNames: ["length-echo client", "length-echo test CA"])
        let server = try await startServer { $0.tls = context }
        for (name, certificate, key, allowed) in [
            ("the client's own", certificates.clientCertificate, certificates.clientKey, true),
            ("the CA's", certificates.ca, directory + "/ca.key", false),
            ("a sub-CA's", directory + "/sub.pem", directory + "/sub.key", false),
            ("two CNs", directory + "/two.pem", directory + "/two.key", false),
        ] {
            var configuration = ClientConfiguration(port: server.port)
            configuration.serverName = "localhost"
            configuration.tls = try TLSContext.client(
                trustRoots: .file(certificates.ca), certificateChain: certificate, privateKey: key)
            let client = LengthEchoClient(configuration: configuration)
            let reply = try? await client.send(bytes("me"))
            #expect((reply?.text == "2 : me") == allowed, "\(name)")
            await client.close()
        }
        await server.shutdown()
    }
}

@Suite("SPKI digests as openssl prints them", .timeLimit(.minutes(1)))
struct DigestTextTests {
    @Test("--allow-spki-sha256 takes what the README's openssl dgst pipeline prints, prefix and all")
    func opensslOutput() throws {
        let certificates = try TestCertificates.generate("digest-text")
        let printed = try run(
            "/bin/sh",
            [
                "-c",
                "openssl x509 -in \(certificates.clientCertificate) -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256",
            ]
        ).output.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(printed.hasPrefix("SHA2-256(stdin)= ") || printed.hasPrefix("(stdin)= "), "\(printed)")
        let digest = try #require(IdentityPolicy.digest(hex: printed), "\(printed)")
        #expect(IdentityPolicy.digest(hex: try spkiSHA256(certificates.clientCertificate)) == digest)
        #expect(IdentityPolicy.digest(hex: "SHA2-256(stdin)= 12") == nil)
    }
}

@Suite("Client CRLs are checked against the client CA when loaded", .timeLimit(.minutes(1)))
struct CRLLoadingTests {
    private let gen = TestCertificates.packageRoot + "/scripts/gen-certs.sh"

    private func server(_ certificates: TestCertificates, crl: String) throws -> TLSContext {
        try TLSContext.server(
            certificateChain: certificates.serverCertificate, privateKey: certificates.serverKey,
            clientCA: certificates.ca, clientAuthentication: .required, revocation: RevocationPolicy(crlFile: crl))
    }

    @Test("a CRL from another CA, or with the CA's name and another's signature, is refused at load")
    func foreignCRL() throws {
        let ours = try TestCertificates.generate("crl-ours")
        let theirs = try TestCertificates.generate("crl-theirs")
        for set in [ours, theirs] {
            #expect(try run("/bin/bash", [self.gen, "--out", set.directory, "--crl"]).status == 0)
        }
        _ = try self.server(ours, crl: ours.directory + "/crl.pem")  // our own CA's CRL loads
        #expect {
            _ = try self.server(ours, crl: theirs.directory + "/crl.pem")
        } throws: { error in
            "\(error)".contains("not signed by a CA in the client CA file")
        }
    }

    @Test("a file of one good CRL and a truncated second is refused, not half loaded")
    func truncatedCRL() throws {
        let certificates = try TestCertificates.generate("crl-truncated")
        #expect(try run("/bin/bash", [self.gen, "--out", certificates.directory, "--revoke", "client"]).status == 0)
        let good = try String(contentsOfFile: certificates.directory + "/crl.pem", encoding: .utf8)
        let lines = good.split(separator: "\n", omittingEmptySubsequences: false)
        let cut = lines.prefix(lines.count / 2).joined(separator: "\n") + "\n"
        let file = certificates.directory + "/two.pem"
        try (good + cut).write(toFile: file, atomically: true, encoding: .utf8)
        #expect {
            _ = try self.server(certificates, crl: file)
        } throws: { error in
            "\(error)".contains("CRL 2 in \(file)")
        }
    }
}
