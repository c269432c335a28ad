import Foundation
import LengthEcho
import LengthEchoCore
import LengthEchoTLS
import LengthEchoTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The SHA-256 of a certificate's DER SubjectPublicKeyInfo, as the README's openssl pipeline prints it.
func spkiSHA256(_ certificate: String, colons: Bool = false) throws -> String {
    let pipeline =
        "openssl x509 -in \(certificate) -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 \(colons ? "-c" : "")"
    let output = try run("/bin/sh", ["-c", pipeline]).output
    return String(output.split(separator: " ").last ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
}

/// TLS policy for deployments: ALPN, the key log, identities.
@Suite("TLS policy: ALPN, the key log, identities", .timeLimit(.minutes(1)))
struct TLSPolicyTests {
    /// `openssl s_client` with `flags`, sending one message and closing; everything it printed.
    func sClient(port: Int, ca: String, _ flags: String) async throws -> String {
        try await LengthEchoTests.sClient(
            port: port, ca: ca, sending: "alpn\\0", "-servername localhost \(flags)", errors: true
        ).output
    }

    /// For each case, the server executable with `base` and the case's flags, and one message from a client with
    /// `certificates`' client certificate: answered when the case says allowed, else refused; `refused` then
    /// looks at the server.
    func expectClients(
        _ certificates: TestCertificates, base: [String], _ cases: [([String], Bool)],
        maximumVersion: TLSVersion = .tls13,
        refused: (Executable) async throws -> Void = { _ in }
    ) async throws {
        var configuration = ClientConfiguration(port: 0)
        configuration.tls = try certificates.clientContext(withCertificate: true, maximumVersion: maximumVersion)
        configuration.serverName = "localhost"
        for (flags, allowed) in cases {
            let (server, port) = try await startServerExecutable(base + flags)
            defer { server.terminate() }
            configuration.port = port
            let client = LengthEchoClient(configuration: configuration)
            var reply: EchoReply?
            var failure = ""
            do { reply = try await client.send(bytes("me")) } catch { failure = "\(error)" }
            await client.close()
            #expect((reply?.text == "2 : me") == allowed, "\(flags)")
            if !allowed {
                // The client is told why: in TLS 1.3 the server checks the certificate after the client has
                // finished its handshake; in TLS 1.2 during it, where the same alert could also mean no cipher.
                let told =
                    maximumVersion == .tls13
                    ? "the server refused our client certificate: not an identity it allows"
                    : "our client certificate may not be an identity it allows, or there is no cipher in common"
                #expect(failure.contains(told), "\(failure)")
                try await refused(server)
            }
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

    @Test("without --alpn-required a client offering nothing is served without ALPN; one offering only h2 is refused")
    func offered() async throws {
        let certificates = try await TestCertificates.main.value
        let server = try await startServerForSClient(certificates, idleTimeout: .milliseconds(1500))
        let other = try await self.sClient(port: server.port, ca: certificates.ca, "-alpn h2 -quiet")
        #expect(other.contains("alert no application protocol") && !other.contains("4 : alpn"), "\(other)")
        let plain = try await self.sClient(port: server.port, ca: certificates.ca, "-ign_eof")
        #expect(plain.contains("No ALPN negotiated") && plain.contains("4 : alpn"), "\(plain)")
        await server.shutdown()
    }

    @Test(
        "--tls-keylog: tshark decrypts a captured session with the server's key log; the client's has its secrets",
        .enabled(
            if: FileManager.default.isExecutableFile(atPath: "/usr/bin/tshark")
                || ProcessInfo.processInfo.environment["CI"] != nil))
    func keyLog() async throws {
        let certificates = try await TestCertificates.main.value
        let folder = NSTemporaryDirectory() + "length-echo-keylog-\(getpid())"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let (serverKeys, clientKeys, capture) = (
            folder + "/server.keys", folder + "/client.keys", folder + "/cap.pcapng"
        )
        let (server, port) = try await startServerExecutable([
            "--tls", "--cert", certificates.serverCertificate, "--key", certificates.serverKey, "--quiet",
            "--tls-keylog", serverKeys,
        ])
        defer { server.terminate() }
        #expect(server.stderr.contains("warning: --tls-keylog"), "it says that the keys are written")
        // Writing the capture, and printing one line per packet, so the test can wait for the end. Other tests'
        // connections can carry the same port number (a balancer's frontend on 127.0.0.77, say): once in CI the
        // capture had a second connection, and it was stream 0. So the test follows only the streams opened to
        // the server, and waits until each is closed.
        let tshark = try Executable(
            "/usr/bin/tshark",
            ["-i", "lo", "-f", "tcp port \(port)", "-w", capture, "-P", "-l", "-T", "fields"]
                + CapturedStreams.fields.flatMap { ["-e", $0] })
        defer { tshark.terminate(signal: SIGKILL) }
        await tshark.wait(seconds: 20) { $0.stderr.contains("Capture started") || !$0.isRunning }
        try #require(tshark.isRunning, "tshark did not start: \(tshark.stderr)")
        let client = try Executable(
            "client",
            [
                "--tls", "--ca", certificates.ca, "--server-name", "localhost", "--port", "\(port)", "--tls-keylog",
                clientKeys, "a secret message",
            ])
        #expect(await client.exitStatus() == 0, "\(client.stderr)")
        #expect(client.stderr.contains("warning: --tls-keylog"))
        // Every stream to the server closed (packets reach tshark in blocks, a moment later): then it stops and
        // writes the file.
        await tshark.wait(seconds: 20) { CapturedStreams($0.stdout, port: port).allClosed || !$0.isRunning }
        tshark.terminate(signal: SIGTERM)
        _ = await tshark.exitStatus()
        let streams = CapturedStreams(tshark.stdout, port: port)
        try #require(!streams.toServer.isEmpty, "no connection to the server captured: \(tshark.stdout)")
        let follow: @Sendable (String?) throws -> String = { keys in
            try streams.toServer.map { stream in
                try run(
                    "/usr/bin/tshark",
                    ["-r", capture, "-d", "tcp.port==\(port),tls", "-q", "-z", "follow,tls,ascii,\(stream)"]
                        + (keys.map { ["-o", "tls.keylog_file:\($0)"] } ?? [])
                ).output
            }.joined()
        }
        let decrypted = try await blocking { try follow(serverKeys) }
        #expect(
            decrypted.contains("a secret message") && decrypted.contains("16 : a secret message"),
            "\(decrypted) tshark: \(tshark.stderr)")
        let sealed = try await blocking { try follow(nil) }
        #expect(!sealed.contains("a secret message"), "without the key log the capture stays encrypted")
        for keys in [serverKeys, clientKeys] {
            var info = stat()
            #expect(stat(keys, &info) == 0 && info.st_mode & 0o777 == 0o600, "\(keys) is mode 0600")
            let text = try String(contentsOfFile: keys, encoding: .utf8)
            #expect(text.contains("CLIENT_TRAFFIC_SECRET_0 ") && text.contains("SERVER_HANDSHAKE_TRAFFIC_SECRET "))
        }
    }

    @Test("--tls-keylog refuses a symbolic link, a FIFO and a file of another user; an open file is made 0600, said")
    func keyLogFile() async throws {
        let certificates = try await TestCertificates.main.value
        let folder = NSTemporaryDirectory() + "length-echo-keylog-file-\(getpid())"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let tls = ["--tls", "--cert", certificates.serverCertificate, "--key", certificates.serverKey, "--quiet"]
        let target = folder + "/target"
        #expect(FileManager.default.createFile(atPath: target, contents: nil))
        try FileManager.default.createSymbolicLink(atPath: folder + "/link", withDestinationPath: target)
        #expect(mkfifo(folder + "/fifo", 0o600) == 0)
        let foreign = folder + "/foreign"
        #expect(FileManager.default.createFile(atPath: foreign, contents: nil))
        // Giving a file away takes root (as the tests run here and in CI); elsewhere that case is left out.
        let givenAway = chown(foreign, 65534, 65534) == 0
        let cases =
            [("link", "symbolic link"), ("fifo", "not a regular file")]
            + (givenAway ? [("foreign", "belongs to uid 65534")] : [])
        for (name, says) in cases {
            let server = try Executable(
                "server", ["--host", "127.0.0.1", "--port", "0", "--tls-keylog", folder + "/" + name] + tls)
            #expect(await server.exitStatus() != 0, "\(name)")
            #expect(server.stderr.contains(says), "\(name): \(server.stderr)")
        }
        let open = folder + "/open.keys"
        #expect(FileManager.default.createFile(atPath: open, contents: nil))
        #expect(chmod(open, 0o666) == 0)
        let (server, _) = try await startServerExecutable(tls + ["--tls-keylog", open])
        defer { server.terminate() }
        #expect(
            server.stderr.contains("was readable or writable by others (mode 0666); it is 0600 now"), "\(server.stderr)"
        )
        let mode = try FileManager.default.attributesOfItem(atPath: open)[.posixPermissions] as? Int
        #expect(mode == 0o600)
    }

    @Test(
        "--allow-cn / --allow-spki-sha256: a verified client outside the list is refused with an alert, logged by identity"
    )
    func allowedClients() async throws {
        let certificates = try await TestCertificates.main.value
        let spki = try spkiSHA256(certificates.clientCertificate)
        let base = [
            "--tls", "--cert", certificates.serverCertificate, "--key", certificates.serverKey, "--client-ca",
            certificates.ca, "--client-auth", "required", "--quiet", "--log-format", "json",
        ]
        try await self.expectClients(
            certificates, base: base,
            [
                (["--allow-cn", "length-echo client"], true), (["--allow-spki-sha256", spki.uppercased()], true),
                (["--allow-cn", "someone else", "--allow-dns", "length-echo client"], false),
            ]
        ) { server in
            let line = try #require(await waitForConnectionLines(server, count: 1).first)
            #expect(line["end"] as? String == "handshake-failed")
            #expect(
                (line["detail"] as? String)?.contains(
                    "the client's certificate is not one this server allows: CN=length-echo client, SPKI sha256 \(spki)"
                )
                    == true, "\(line)")
        }
    }

    @Test("over TLS 1.2 an identity refusal comes in the handshake, and the client says what it may mean")
    func allowedClientsTLS12() async throws {
        let certificates = try await TestCertificates.main.value
        let base = [
            "--tls", "--cert", certificates.serverCertificate, "--key", certificates.serverKey, "--client-ca",
            certificates.ca, "--client-auth", "required", "--quiet",
        ]
        try await self.expectClients(
            certificates, base: base,
            [(["--allow-cn", "length-echo client"], true), (["--allow-cn", "other"], false)],
            maximumVersion: .tls12)
    }

    @Test("--allow-dns and --allow-uri (a SPIFFE ID) match the client certificate's subjectAltName, exactly")
    func allowedNames() async throws {
        let certificates = try TestCertificates.generate(
            "sans", ["--client-dns", "client.example", "--client-uri", "spiffe://example.org/client"])
        let base = [
            "--tls", "--cert", certificates.serverCertificate, "--key", certificates.serverKey, "--client-ca",
            certificates.ca, "--client-auth", "required", "--quiet",
        ]
        try await self.expectClients(
            certificates, base: base,
            [
                (["--allow-dns", "client.example"], true), (["--allow-uri", "spiffe://example.org/client"], true),
                (["--allow-dns", "*.example"], false), (["--allow-uri", "spiffe://example.org/"], false),
            ])
    }

    @Test("TLS 1.3 suites in the server's order (AES-128-GCM first on an AES CPU); TLS 1.2 keeps the client's order")
    func suitePreference() async throws {
        let certificates = try await TestCertificates.main.value
        let server = try await startServerForSClient(certificates, idleTimeout: .milliseconds(1500))
        let port = server.port
        // OpenSSL's own client lists AES-256-GCM first: the server's preference wins on TLS 1.3.
        let tls13 = try await self.sClient(port: port, ca: certificates.ca, "-brief")
        #expect(tls13.contains("TLS_AES_128_GCM_SHA256") || tls13.contains("TLS_CHACHA20_POLY1305_SHA256"), "\(tls13)")
        let chachaOnly = try await self.sClient(
            port: port, ca: certificates.ca, "-brief -ciphersuites TLS_CHACHA20_POLY1305_SHA256")
        #expect(chachaOnly.contains("TLS_CHACHA20_POLY1305_SHA256"), "every suite is still offered: \(chachaOnly)")
        let tls12 = try await self.sClient(
            port: port, ca: certificates.ca,
            "-brief -tls1_2 -cipher ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256")
        #expect(tls12.contains("ECDHE-ECDSA-AES256-GCM-SHA384"), "TLS 1.2: the client's first choice: \(tls12)")
        await server.shutdown()
    }

    @Test("client --pin-spki-sha256: the server's key must match as well as verify")
    func pinnedServerKey() async throws {
        let certificates = try await TestCertificates.main.value
        let (server, port) = try await startServerExecutable([
            "--tls", "--cert", certificates.serverCertificate, "--key", certificates.serverKey, "--quiet",
        ])
        defer { server.terminate() }
        let pinned = try spkiSHA256(certificates.serverCertificate, colons: true)
        let right = try Executable(
            "client",
            [
                "--tls", "--ca", certificates.ca, "--server-name", "localhost", "--port", "\(port)",
                "--pin-spki-sha256", pinned, "pinned",
            ])
        #expect(await right.exitStatus() == 0 && right.stdout == "6 : pinned\n", "\(right.stderr)")
        let wrong = try Executable(
            "client",
            [
                "--tls", "--ca", certificates.ca, "--server-name", "localhost", "--port", "\(port)",
                "--pin-spki-sha256",
                String(repeating: "ab", count: 32), "pinned",
            ])
        #expect(await wrong.exitStatus() != 0)
        #expect(wrong.stderr.contains("the server's public key is not one this client pins"), "\(wrong.stderr)")
    }
}

/// What tshark printed, a line per packet with `fields`: the TCP streams opened to 127.0.0.1:`port` (their SYN
/// went there), and whether each has been closed (two FINs, or a reset).
private struct CapturedStreams {
    static let fields = [
        "tcp.stream", "ip.dst", "tcp.dstport", "tcp.flags.syn", "tcp.flags.ack", "tcp.flags.fin", "tcp.flags.reset",
    ]
    private(set) var toServer: [Int] = []
    private var closed: Set<Int> = []

    init(_ lines: String, port: Int) {
        var fins: [Int: Int] = [:]
        for line in lines.split(separator: "\n") {
            let field = line.split(separator: "\t", omittingEmptySubsequences: false).map(String.init)
            guard field.count == Self.fields.count, let stream = Int(field[0]) else { continue }
            let flag = { (index: Int) in field[index] == "1" || field[index] == "True" }
            let opening = flag(3) && !flag(4) && field[1] == "127.0.0.1" && field[2] == "\(port)"
            if opening && !self.toServer.contains(stream) { self.toServer.append(stream) }
            if flag(5) { fins[stream, default: 0] += 1 }
            if flag(5) && fins[stream, default: 0] >= 2 || flag(6) { self.closed.insert(stream) }
        }
    }

    var allClosed: Bool { !self.toServer.isEmpty && self.toServer.allSatisfy { self.closed.contains($0) } }
}
