import Foundation
import LengthEcho
import LengthEchoTestSupport
import Testing

/// The server's configuration file (`--config`, YAML keyed by the long flag names) and environment
/// (`LENGTH_ECHO_<KEY>`), beneath its flags; `--check-config`. Over the real executable.
@Suite("The configuration file and the environment", .timeLimit(.minutes(1)))
struct ConfigurationFileTests {
    /// A file of `text` in a directory of its own.
    static func file(_ text: String) throws -> String {
        let directory = NSTemporaryDirectory() + "length-echo-config-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let path = directory + "/length-echo.yaml"
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    @Test("a server started from a file alone serves mutual TLS with the file's allow list")
    func fromFile() async throws {
        let certificates = try await TestCertificates.main.value
        let path = try Self.file(
            """
            host: 127.0.0.1
            port: 0
            quiet: true
            tls: true
            cert: \(certificates.serverCertificate)
            key: \(certificates.serverKey)
            client-ca: \(certificates.ca)
            client-auth: required
            allow-cn: [length-echo client]
            """)
        let server = try Executable("server", ["--config", path])
        defer { server.terminate(signal: SIGKILL) }
        await server.wait { $0.stderr.contains("listening on") || !$0.isRunning }
        let line = try #require(server.stderr.split(separator: "\n").first { $0.contains("listening on") })
        let port = try #require(line.split(separator: ":").last.flatMap { Int($0.prefix { $0.isNumber }) })
        var configuration = ClientConfiguration(host: "127.0.0.1", port: port)
        configuration.serverName = "localhost"
        configuration.tls = try certificates.clientContext(withCertificate: true)
        let client = LengthEchoClient(configuration: configuration)
        #expect(try await client.send(Array("from a file".utf8)).text == "11 : from a file")
        await client.close()
        // Without a certificate: refused (client-auth required, from the file).
        configuration.tls = try certificates.clientContext()
        let anonymous = LengthEchoClient(configuration: configuration)
        await #expect(throws: (any Error).self) { try await anonymous.send(Array("x".utf8)) }
        await anonymous.close()
        // The same file with another name allowed: the client's verified certificate is refused by identity.
        let other = try Self.file(
            try String(contentsOfFile: path, encoding: .utf8).replacingOccurrences(
                of: "allow-cn: [length-echo client]", with: "allow-cn: [someone else]"))
        let strict = try Executable("server", ["--config", other])
        defer { strict.terminate(signal: SIGKILL) }
        await strict.wait { $0.stderr.contains("listening on") || !$0.isRunning }
        let strictLine = try #require(strict.stderr.split(separator: "\n").first { $0.contains("listening on") })
        configuration.port = try #require(
            strictLine.split(separator: ":").last.flatMap { Int($0.prefix { $0.isNumber }) })
        configuration.tls = try certificates.clientContext(withCertificate: true)
        let refused = LengthEchoClient(configuration: configuration)
        await #expect(throws: (any Error).self) { try await refused.send(Array("x".utf8)) }
        await refused.close()
    }

    @Test("precedence: LENGTH_ECHO_PORT over the file, --port over both; each key says where it came from")
    func precedence() throws {
        let path = try Self.file("port: 4100\nmax-connections: 100\ndeny-from: [10.0.0.0/8, 192.0.2.0/24]\n")
        let file = try Executable("server", ["--config", path, "--check-config"])
        #expect(file.exitStatusBlocking() == 0, "\(file.stderr)")
        let lines = file.stdout.split(separator: "\n").map { $0.split(separator: " ", omittingEmptySubsequences: true) }
        #expect(lines.contains(["port", "4100", "(file)"]), "\(file.stdout)")
        #expect(lines.contains(["max-connections", "100", "(file)"]))
        #expect(lines.contains(["deny-from", "10.0.0.0/8,", "192.0.2.0/24", "(file)"]))
        #expect(lines.contains(["idle-timeout", "60.0", "(default)"]))
        let environment = try Executable(
            "server", ["--config", path, "--check-config"], environment: ["LENGTH_ECHO_PORT": "4200"])
        #expect(environment.exitStatusBlocking() == 0)
        #expect(
            environment.stdout.split(separator: "\n").contains {
                $0.split(separator: " ") == ["port", "4200", "(environment)"]
            })
        let flag = try Executable(
            "server", ["--config", path, "--check-config", "--port", "4300"], environment: ["LENGTH_ECHO_PORT": "4200"])
        #expect(flag.exitStatusBlocking() == 0)
        #expect(flag.stdout.split(separator: "\n").contains { $0.split(separator: " ") == ["port", "4300", "(flag)"] })
    }

    @Test(
        "--check-config exits 1 with a line naming the problem: a key for another certificate, an unknown key, a bad CIDR"
    )
    func checkConfig() async throws {
        let certificates = try await TestCertificates.main.value
        let mismatched = try Self.file(
            "tls: true\ncert: \(certificates.serverCertificate)\nkey: \(certificates.clientKey)\nport: 4000\n")
        let wrongKey = try Executable("server", ["--config", mismatched, "--check-config"])
        #expect(wrongKey.exitStatusBlocking() == 1)
        #expect(
            wrongKey.stderr.contains("server: ") && wrongKey.stderr.lowercased().contains("key"), "\(wrongKey.stderr)")
        #expect(wrongKey.stdout.isEmpty)
        let unknown = try Executable("server", ["--config", try Self.file("prot: 4000\n"), "--check-config"])
        #expect(unknown.exitStatusBlocking() != 0)
        #expect(unknown.stderr.contains("unknown key \"prot\""), "\(unknown.stderr)")
        let cidr = try Executable("server", ["--config", try Self.file("deny-from: 10.0.0.0/33\n"), "--check-config"])
        #expect(cidr.exitStatusBlocking() != 0)
        #expect(cidr.stderr.contains("10.0.0.0/33"), "\(cidr.stderr)")
        let rule = try Executable(
            "server", ["--config", try Self.file("tls: true\nclient-auth: required\n"), "--check-config"])
        #expect(rule.exitStatusBlocking() == 1)
        #expect(rule.stderr.contains("client-auth (in "), "\(rule.stderr)")
        // Nothing was bound: port 4000 (the mismatched file's) was never listened on by a check.
        #expect(!wrongKey.stderr.contains("listening"))
    }

    @Test(
        "SIGHUP reloads the file: a changed allow list applies to new connections; a broken file keeps the last good one, counted; a changed framing needs a restart"
    )
    func reload() async throws {
        let certificates = try await TestCertificates.main.value
        func text(allowing name: String) -> String {
            """
            tls: true
            cert: \(certificates.serverCertificate)
            key: \(certificates.serverKey)
            client-ca: \(certificates.ca)
            client-auth: required
            allow-cn: [\(name)]

            """
        }
        let path = try Self.file(text(allowing: "someone else"))
        let (server, port, status) = try await startWithStatus(["--config", path])
        defer { server.terminate(signal: SIGKILL) }
        var configuration = ClientConfiguration(host: "127.0.0.1", port: port)
        configuration.serverName = "localhost"
        configuration.tls = try certificates.clientContext(withCertificate: true)
        func served() async -> Bool {
            let client = LengthEchoClient(configuration: configuration)
            defer { Task { await client.close() } }
            return (try? await client.send(Array("hi".utf8)).text) == "2 : hi"
        }
        #expect(await served() == false)

        try text(allowing: "length-echo client").write(toFile: path, atomically: true, encoding: .utf8)
        server.terminate(signal: SIGHUP)
        await server.wait(seconds: 10) { $0.stderr.contains("reloaded the certificate") || !$0.isRunning }
        #expect(await served())

        // Broken mid-edit: nothing changes, one line says why, /metrics counts it.
        try "tls: true\nclient-auth: [".write(toFile: path, atomically: true, encoding: .utf8)
        server.terminate(signal: SIGHUP)
        await server.wait(seconds: 10) { $0.stderr.contains("reload failed") || !$0.isRunning }
        #expect(server.stderr.contains("the last good configuration keeps serving"), "\(server.stderr)")
        #expect(await served())
        let metrics = try await blocking { try http("/metrics", port: status).body }
        #expect(sample(metrics, #"length_echo_reloads_total{result="failure"}"#) == 1, "\(metrics)")
        #expect(sample(metrics, #"length_echo_reloads_total{result="success"}"#) == 1)

        // A setting a running server cannot take (the framing) is named as needing a restart; the old one serves.
        // (The port is a flag here, and a flag wins over the file: changing it in the file changes nothing.)
        try (text(allowing: "length-echo client") + "framing: line\nport: 1\n").write(
            toFile: path, atomically: true, encoding: .utf8)
        server.terminate(signal: SIGHUP)
        await server.wait(seconds: 10) { $0.stderr.contains("framing changed: restart to apply") || !$0.isRunning }
        #expect(server.stderr.contains("framing changed: restart to apply (nul keeps serving)"), "\(server.stderr)")
        #expect(!server.stderr.contains("port changed"))
        #expect(await served())
    }

    @Test(
        "SIGHUP: a changed max-message, per-address limit and deny-from apply to new connections; one already open keeps its own"
    )
    func reloadLimits() async throws {
        let path = try Self.file("max-message: 100\nquiet: true\n")
        let (server, port) = try await startServerExecutable(["--config", path, "--log-format", "json"])
        defer { server.terminate(signal: SIGKILL) }
        let fifty = String(repeating: "x", count: 50)
        let before = try await blocking { () -> RawSocket in
            let socket = try RawSocket.connect(port: port)
            try socket.write(bytes(fifty) + [0])
            #expect(try socket.readReplyText() == "50 : \(fifty)")
            return socket
        }
        try "max-message: 10\nquiet: true\n".write(toFile: path, atomically: true, encoding: .utf8)
        server.terminate(signal: SIGHUP)
        await server.wait(seconds: 10) {
            $0.stderr.contains("reloaded, max-message for new connections") || !$0.isRunning
        }
        #expect(server.stderr.contains("reloaded, max-message for new connections"), "\(server.stderr)")
        // Open before the reload: still 100.
        #expect(
            try await blocking {
                try before.write(bytes(fifty) + [0]); return try before.readReplyText()
            } == "50 : \(fifty)")
        // New: 10.
        let after = try await blocking { () -> String? in
            let socket = try RawSocket.connect(port: port)
            try socket.write(bytes(fifty) + [0])
            return try socket.readReplyText()
        }
        #expect(after?.hasPrefix("error: ") == true && after?.contains("10") == true, "\(after ?? "nil")")

        // A per-address limit of 1.
        try "max-message: 10\nquiet: true\nmax-connections-per-ip: 1\n".write(
            toFile: path, atomically: true, encoding: .utf8)
        server.terminate(signal: SIGHUP)
        await server.wait(seconds: 10) {
            $0.stderr.components(separatedBy: "reloaded").count > 2 || !$0.isRunning
        }
        // Counted from now on: one connection from 127.0.0.1 (`before` was not counted: no limit then), then busy.
        let (first, busy) = try await blocking { () -> (RawSocket, String?) in
            let first = try RawSocket.connect(port: port)
            try first.write(bytes("one") + [0])
            #expect(try first.readReplyText() == "3 : one")
            return (first, try RawSocket.connect(port: port).readReplyText())
        }
        #expect(busy?.hasPrefix("error: server busy: 1 connections from your address") == true, "\(busy ?? "nil")")

        try "max-message: 10\nquiet: true\ndeny-from: [127.0.0.0/8]\n".write(
            toFile: path, atomically: true, encoding: .utf8)
        server.terminate(signal: SIGHUP)
        await server.wait(seconds: 10) {
            $0.stderr.components(separatedBy: "reloaded").count > 3 || !$0.isRunning
        }
        let denied = try await blocking { () -> [UInt8] in
            let socket = try RawSocket.connect(port: port)
            try? socket.write(bytes("hi") + [0])
            return try socket.readUntilClosed()
        }
        #expect(denied.isEmpty)
        await server.wait(seconds: 10) { server in
            connectionLines(server).contains { $0["end"] as? String == "denied" } || !server.isRunning
        }
        let lines = connectionLines(server)
        #expect(lines.contains { $0["end"] as? String == "denied" }, "\(lines)")
        _ = (before, first)
    }

    @Test("deploy/length-echo.yaml, the unit's file, checks (with the test certificates where it names /etc's)")
    func example() async throws {
        let certificates = try await TestCertificates.main.value
        let example = try String(
            contentsOfFile: TestCertificates.packageRoot + "/deploy/length-echo.yaml", encoding: .utf8)
        let path = try Self.file(
            example.replacingOccurrences(of: "/etc/length-echo/server.pem", with: certificates.serverCertificate)
                .replacingOccurrences(of: "/etc/length-echo/server.key", with: certificates.serverKey))
        let check = try Executable("server", ["--config", path, "--check-config"])
        #expect(check.exitStatusBlocking() == 0, "\(check.stderr)")
        print("ConfigurationFileTests: --check-config on deploy/length-echo.yaml:\n\(check.stdout)")
        for key in ["tls", "cert", "status", "drain-timeout", "log-format"] {
            #expect(check.stdout.split(separator: "\n").contains { $0.hasPrefix(key + " ") && $0.hasSuffix("(file)") })
        }
        let unit = try String(
            contentsOfFile: TestCertificates.packageRoot + "/deploy/systemd/length-echo.service", encoding: .utf8)
        #expect(unit.contains("--config /etc/length-echo/length-echo.yaml"))
    }

    @Test("SIGHUP: a changed log-level applies to the lines after it")
    func reloadLogLevel() async throws {
        let path = try Self.file("log-level: warning\nquiet: true\n")
        let (server, port) = try await startServerExecutable(["--config", path])
        defer { server.terminate(signal: SIGKILL) }
        func exchange() async throws {
            _ = try await blocking {
                let socket = try RawSocket.connect(port: port)
                try socket.write(bytes("x") + [0])
                return try socket.readReplyText()
            }
        }
        try await exchange()
        try "log-level: info\nquiet: true\n".write(toFile: path, atomically: true, encoding: .utf8)
        server.terminate(signal: SIGHUP)
        await server.wait(seconds: 10) { $0.stderr.contains("log-level") || !$0.isRunning }
        try await exchange()
        await server.wait(seconds: 10) { $0.stderr.contains("connection ended") || !$0.isRunning }
        // One line: the second connection's; the first ended under `warning`.
        #expect(server.stderr.components(separatedBy: "connection ended").count - 1 == 1, "\(server.stderr)")
    }

    @Test("SIGHUP with a port changed in the file: named as needing a restart; the old port keeps serving")
    func reloadPort() async throws {
        let (old, new) = (try freePort(), try freePort())
        let path = try Self.file("host: 127.0.0.1\nport: \(old)\nquiet: true\n")
        let server = try Executable("server", ["--config", path])
        defer { server.terminate(signal: SIGKILL) }
        await server.wait(seconds: 10) { $0.stderr.contains("listening on") || !$0.isRunning }
        try "host: 127.0.0.1\nport: \(new)\nquiet: true\n".write(toFile: path, atomically: true, encoding: .utf8)
        server.terminate(signal: SIGHUP)
        await server.wait(seconds: 10) { $0.stderr.contains("port changed") || !$0.isRunning }
        #expect(server.stderr.contains("port changed: restart to apply (\(old) keeps serving)"), "\(server.stderr)")
        let reply = try await blocking {
            let socket = try RawSocket.connect(port: old)
            try socket.write(bytes("still") + [0])
            return try socket.readReplyText()
        }
        #expect(reply == "5 : still")
    }
}
