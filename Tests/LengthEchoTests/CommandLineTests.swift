import Foundation
import LengthEchoCore
import LengthEchoTestSupport
import Testing

@Suite("The server and client executables", .timeLimit(.minutes(1)))
struct CommandLineTests {
    /// Starts `server` on a free port and returns it with the port it printed.
    private func startServer(_ extra: [String] = []) async throws -> (Executable, Int) {
        try await startServerExecutable(extra)
    }

    @Test("`client test_string` prints `11 : test_string`; the server prints `receive: test_string`")
    func demo() async throws {
        let (server, port) = try await self.startServer()
        let client = try Executable("client", ["--port", "\(port)", "test_string"])
        #expect(await client.exitStatus() == 0)
        #expect(client.stdout == "11 : test_string\n")
        await server.wait { $0.stdout.contains("receive: test_string\n") }
        let many = try Executable(
            "client", ["--port", "\(port)", "a", "안녕", "-"], stdin: Data("from stdin\nline two\n".utf8))
        #expect(await many.exitStatus() == 0)
        #expect(many.stdout == "1 : a\n6 : 안녕\n10 : from stdin\n8 : line two\n")
        let forged = try Executable("client", ["--port", "\(port)", "x\nreceive: forged"])
        #expect(await forged.exitStatus() == 0)
        await server.wait { $0.stdout.contains("receive: x\\nreceive: forged\n") }
        server.terminate(signal: SIGTERM)
        #expect(await server.exitStatus() == 0)
    }

    @Test("--quiet stops the receive lines")
    func quiet() async throws {
        let (server, port) = try await self.startServer(["--quiet"])
        let client = try Executable("client", ["--port", "\(port)", "hush"])
        #expect(await client.exitStatus() == 0)
        server.terminate(signal: SIGINT)
        #expect(await server.exitStatus() == 0)
        #expect(server.stdout.isEmpty)
    }

    @Test("a port in use is one clear line and a non-zero exit")
    func portInUse() async throws {
        let (server, port) = try await self.startServer()
        let second = try Executable("server", ["--host", "127.0.0.1", "--port", "\(port)"])
        #expect(await second.exitStatus() != 0)
        #expect(second.stderr.contains("port \(port) is already in use"))
        // The library says what happened; the executable adds what to do in terms of its own flags.
        #expect(second.stderr.contains("pick another --port"))
        server.terminate()
        #expect(await server.exitStatus() == 0)
    }

    @Test("a refused connection says no server is running there; a server error exits non-zero")
    func clientErrors() async throws {
        let (server, port) = try await self.startServer(["--max-message", "4"])
        let tooLong = try Executable("client", ["--port", "\(port)", "too long"])
        #expect(await tooLong.exitStatus() == 1)
        #expect(tooLong.stderr == "client: the server refused the message: message exceeds the 4-byte limit\n")
        server.terminate()
        #expect(await server.exitStatus() == 0)
        let closed = try ClosedPort()
        let refused = try Executable("client", ["--port", "\(closed.port)", "x"])
        #expect(await refused.exitStatus() == 1)
        #expect(refused.stderr.contains("no server is running on port \(closed.port)"))
        #expect(refused.stderr.contains("start one with `server --port \(closed.port)`"))
        let badFlag = try Executable("server", ["--port", "70000"])
        #expect(await badFlag.exitStatus() != 0)
        #expect(badFlag.stderr.contains("--port"))
    }

    @Test("the README's TLS demo: certificates, a TLS server, a TLS client; and its errors")
    func tlsDemo() async throws {
        let certificates = try await TestCertificates.main.value
        let other = try await TestCertificates.other.value
        let (server, port) = try await self.startServer([
            "--tls", "--cert", certificates.serverCertificate, "--key", certificates.serverKey,
        ])
        #expect(server.stderr.contains("(TLS 1.2+)"))
        let client = try Executable(
            "client",
            ["--tls", "--ca", certificates.ca, "--host", "localhost", "--port", "\(port)", "--verbose", "test_string"])
        #expect(await client.exitStatus() == 0)
        #expect(client.stdout == "11 : test_string\n")
        #expect(client.stderr.contains("TLSv1.3") && client.stderr.contains("CN = localhost"))

        let untrusted = try Executable("client", ["--tls", "--port", "\(port)", "x"])
        #expect(await untrusted.exitStatus() == 1)
        #expect(untrusted.stderr.contains("unknown CA") && untrusted.stderr.contains("--ca"))

        let insecure = try Executable("client", ["--tls", "--insecure", "--port", "\(port)", "x"])
        #expect(await insecure.exitStatus() == 0)
        #expect(insecure.stderr.contains("warning: --insecure"))

        let plaintext = try Executable("client", ["--port", "\(port)", "x"])
        #expect(await plaintext.exitStatus() == 1)
        #expect(plaintext.stderr.contains("this port speaks TLS"))
        server.terminate()
        #expect(await server.exitStatus() == 0)

        let mismatched = try Executable(
            "server", ["--tls", "--port", "0", "--cert", certificates.serverCertificate, "--key", other.serverKey])
        #expect(await mismatched.exitStatus() == 1)
        #expect(mismatched.stderr.contains("does not match the certificate"))
    }

    @Test("SIGHUP every 0.5 s during a TLS per-request load fails no handshake")
    func reloadUnderLoad() async throws {
        let certificates = try await TestCertificates.main.value
        // Thousands of connections: their connection lines are not what this test reads.
        let (server, port) = try await self.startServer([
            "--tls", "--cert", certificates.serverCertificate, "--key", certificates.serverKey, "--log-level", "notice",
        ])
        defer { server.terminate(signal: SIGKILL) }  // a test that throws must not leave it running
        let bench = try Executable(
            "bench",
            [
                "--port", "\(port)", "--tls", "--ca", certificates.ca, "--server-name", "localhost", "--mode",
                "per-request", "-c", "8", "--threads", "1", "--duration", "3", "--warmup", "0", "--json",
            ]
        )
        // The reloads are the scenario: one every 0.5 s while the load runs (as many as fit in it: on a starved
        // machine the sleeps run long).
        var sent = 0
        for _ in 0..<5 where bench.isRunning {
            try await Task.sleep(for: .milliseconds(500))
            kill(server.pid, SIGHUP)
            sent += 1
        }
        #expect(await bench.exitStatus() == 0, "\(bench.stderr)")
        #expect(bench.stdout.contains("\"errors\":{}"), "\(bench.stdout)")
        #expect(!bench.stdout.contains("\"handshakes\":0,"), "\(bench.stdout)")
        #expect(sent >= 1)
        let reloads = sent
        let reloaded = await server.wait(seconds: 20) {
            $0.stderr.components(separatedBy: "reloaded the certificate").count > reloads || !$0.isRunning
        }
        #expect(reloaded, "\(reloads) SIGHUPs sent: \(server.stderr.suffix(500))")
        server.terminate()
        let exited = await server.wait(seconds: 20) { !$0.isRunning }
        #expect(exited, "still running 20 s after SIGTERM: \(server.stderr.suffix(800))")
        #expect(await server.exitStatus() == 0)
    }

    @Test(
        "after 10,000 full TLS handshakes the server's memory is back near where it started",
        // Ten thousand handshakes fill both cores for seconds and starve the other tests' timers; it runs on
        // its own with LENGTH_ECHO_LOAD_TESTS=1 (a step of .ci/run), never instrumented.
        .enabled(if: ProcessInfo.processInfo.environment["LENGTH_ECHO_LOAD_TESTS"] != nil)
    )
    func memoryAfterHandshakes() async throws {
        let certificates = try await TestCertificates.main.value
        let (server, port) = try await self.startServer([
            "--tls", "--cert", certificates.serverCertificate, "--key", certificates.serverKey,
        ])
        defer { server.terminate(signal: SIGKILL) }  // a test that throws must not leave it running
        let arguments = [
            "--port", "\(port)", "--tls", "--ca", certificates.ca, "--server-name", "localhost", "--mode",
            "per-request", "--no-resume", "-c", "50", "--threads", "1", "--warmup", "0",
        ]
        let warmup = try Executable("bench", arguments + ["--requests", "500"])
        #expect(await warmup.exitStatus() == 0)
        let before = residentKiB(server.pid)
        let load = try Executable("bench", arguments + ["--requests", "10000", "--json"])
        #expect(await load.exitStatus() == 0, "\(load.stderr)")
        #expect(load.stdout.contains("\"errors\":{}"), "\(load.stdout)")
        let after = residentKiB(server.pid)
        #expect(after - before < 16 * 1024, "resident memory grew from \(before) KiB to \(after) KiB")
        server.terminate()
        #expect(await server.exitStatus() == 0)
    }

    @Test("extreme flag values are refused with a message instead of trapping later")
    func extremeFlags() async throws {
        for flags in [
            ["--max-message", "9223372036854775807"], ["--idle-timeout", "inf"], ["--idle-timeout", "1e12"],
            ["--message-timeout", "nan"], ["--threads", "100000"], ["--drain-timeout", "-1"],
        ] {
            let server = try Executable("server", ["--host", "127.0.0.1", "--port", "0"] + flags)
            #expect(await server.exitStatus() != 0, "\(flags)")
            #expect(server.stderr.contains(flags[0]), "\(flags): \(server.stderr)")
            #expect(!server.stderr.contains("Fatal error"), "\(flags): \(server.stderr)")
        }
    }

    @Test("address ranges: a mapped range shorter than /96 is refused saying why; host bits set are warned about")
    func addressRanges() async throws {
        let refused = try Executable(
            "server", ["--host", "127.0.0.1", "--port", "0", "--deny-from", "::ffff:127.0.0.0/8"])
        #expect(await refused.exitStatus() != 0)
        #expect(refused.stderr.contains("--deny-from ::ffff:127.0.0.0/8: an IPv4-mapped range"), "\(refused.stderr)")
        let (server, _) = try await startServerExecutable(["--deny-from", "10.0.0.1/24", "--quiet"])
        defer { server.terminate() }
        await server.wait(seconds: 10) { $0.stderr.contains("host bits") || !$0.isRunning }
        #expect(server.stderr.contains("--deny-from 10.0.0.1/24 has host bits set: it is taken as 10.0.0.0/24"))
    }

    @Test("bench that gets no request through exits non-zero and says why")
    func benchNothingSucceeded() async throws {
        let server = try await LengthEchoTests.startServer()
        let bench = try Executable(
            "bench",
            [
                "--host", "127.0.0.1", "--port", "\(server.port)", "--tls", "--duration", "0.5", "--warmup", "0",
                "--connections", "2", "--threads", "1",
            ])
        #expect(await bench.exitStatus() != 0, "\(bench.stdout)")
        #expect(bench.stderr.contains("bench: no request succeeded"), "\(bench.stderr)")
        #expect(bench.stderr.contains("did not speak TLS"), "\(bench.stderr)")
        await server.shutdown()
    }

    @Test("a key readable by others gets a warning at start")
    func keyPermissions() async throws {
        let certificates = try await TestCertificates.main.value
        let directory = NSTemporaryDirectory() + "length-echo-open-key-\(getpid())"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let key = directory + "/server.key"
        try FileManager.default.copyItem(atPath: certificates.serverKey, toPath: key)
        chmod(key, 0o644)
        let (server, _) = try await self.startServer(["--tls", "--cert", certificates.serverCertificate, "--key", key])
        #expect(server.stderr.contains("warning: the key \(key) is readable by everyone (mode 644); chmod 600 it"))
        server.terminate()
        #expect(await server.exitStatus() == 0)
        // Mode 0640 in a group the server runs in (the systemd unit's way, where the service has the key's group):
        // no warning. In a group it is not in: a warning that says so.
        chmod(key, 0o640)
        #expect(chown(key, geteuid(), getegid()) == 0)
        let grouped = try await self.startServer(["--tls", "--cert", certificates.serverCertificate, "--key", key]).0
        #expect(!grouped.stderr.contains("warning: the key"), "\(grouped.stderr)")
        grouped.terminate()
        _ = await grouped.exitStatus()
        if chown(key, geteuid(), 65534) == 0 {  // root, as here and in CI
            let other = try await self.startServer(["--tls", "--cert", certificates.serverCertificate, "--key", key]).0
            #expect(other.stderr.contains("readable by group 65534, which this server is not in"), "\(other.stderr)")
            other.terminate()
            _ = await other.exitStatus()
        }
    }

    @Test("gen-certs.sh --force writes each key to a new 0600 file, never into the old file; it refuses symlinks")
    func generateCertificatesSafely() async throws {
        let directory = NSTemporaryDirectory() + "length-echo-keys-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let script = TestCertificates.packageRoot + "/scripts/gen-certs.sh"
        // An old, world-readable key with a second name: the new key must not be written through it.
        let old = directory + "/server.key"
        try Data("old key\n".utf8).write(to: URL(fileURLWithPath: old))
        chmod(old, 0o644)
        let keep = directory + "/kept"
        #expect(link(old, keep) == 0)
        let forced = try run("/bin/bash", [script, "--out", directory, "--force"])
        #expect(forced.status == 0, "\(forced.output)")
        #expect(try String(contentsOfFile: keep, encoding: .utf8) == "old key\n", "the new key went into the old file")
        var info = stat()
        #expect(stat(old, &info) == 0 && info.st_mode & 0o777 == 0o600)

        // A symlink where a key goes, dangling or not, is refused, with --force too.
        try FileManager.default.removeItem(atPath: directory + "/client.key")
        #expect(symlink(directory + "/elsewhere.key", directory + "/client.key") == 0)
        let refused = try run("/bin/bash", [script, "--out", directory, "--force"])
        #expect(refused.status != 0)
        #expect(refused.output.contains("is a symbolic link"), "\(refused.output)")
        #expect(!FileManager.default.fileExists(atPath: directory + "/elsewhere.key"))
    }

    @Test("gen-certs.sh makes 0600 keys, refuses to overwrite without --force, and its certificates verify")
    func generateCertificates() async throws {
        let certificates = try await TestCertificates.main.value
        let attributes = try FileManager.default.attributesOfItem(atPath: certificates.serverKey)
        #expect((attributes[.posixPermissions] as? Int) == 0o600)
        let again = try run(
            "/bin/bash", [TestCertificates.packageRoot + "/scripts/gen-certs.sh", "--out", certificates.directory])
        #expect(again.status != 0)
        #expect(again.output.contains("pass --force to overwrite"))
        let verified = try run(
            "/usr/bin/env",
            [
                "openssl", "verify", "-CAfile", certificates.ca, certificates.serverCertificate,
                certificates.clientCertificate,
            ])
        #expect(verified.status == 0, "\(verified.output)")
    }

    @Test("SIGHUP reloads a renewed certificate for new connections; a broken one is refused and the old one kept")
    func reloadCertificate() async throws {
        let first = try await TestCertificates.main.value
        let second = try await TestCertificates.other.value
        let directory = first.directory + "-reload-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        func install(_ certificates: TestCertificates) throws {
            for name in ["server.pem", "server.key"] {
                let target = directory + "/" + name
                try? FileManager.default.removeItem(atPath: target)
                try FileManager.default.copyItem(atPath: certificates.directory + "/" + name, toPath: target)
            }
        }
        try install(first)
        let (server, port) = try await self.startServer([
            "--tls", "--cert", directory + "/server.pem", "--key", directory + "/server.key",
        ])
        func client(_ ca: String) async throws -> Executable {
            let client = try Executable("client", ["--tls", "--ca", ca, "--port", "\(port)", "renewed"])
            _ = await client.exitStatus()
            return client
        }
        #expect(try await client(first.ca).stdout == "7 : renewed\n")

        try install(second)
        server.terminate(signal: SIGHUP)
        await server.wait { $0.stderr.contains("reloaded the certificate") }
        #expect(try await client(second.ca).stdout == "7 : renewed\n")
        #expect(try await client(first.ca).stderr.contains("unknown CA"))

        // A key that does not match: refused, and the server goes on with what it had.
        try FileManager.default.removeItem(atPath: directory + "/server.key")
        try FileManager.default.copyItem(atPath: first.serverKey, toPath: directory + "/server.key")
        server.terminate(signal: SIGHUP)
        await server.wait { $0.stderr.contains("the last good configuration keeps serving") }
        #expect(server.stderr.contains("does not match"))
        #expect(try await client(second.ca).stdout == "7 : renewed\n")

        server.terminate()
        #expect(await server.exitStatus() == 0)
    }

    @Test("a second SIGTERM during a drain exits at once with 130; the first drains and exits 0")
    func secondSignal() async throws {
        let (server, port) = try await self.startServer(["--quiet", "--drain-timeout", "30"])
        let socket = try await blocking { () -> RawSocket in
            let socket = try RawSocket.connect(port: port)
            try socket.write(bytes("first") + [0])  // answered: the server has it
            _ = try socket.readReply()
            try socket.write(bytes("half a mess"))  // holds the drain open
            return socket
        }
        server.terminate()
        await server.wait(seconds: 10) { $0.stderr.contains("draining 1 connection") || !$0.isRunning }
        server.terminate()
        #expect(await server.exitStatus() == 130)
        #expect(server.stderr.contains("second signal, exiting now"))
        _ = socket
    }

    @Test("the soft open-file limit is raised to the hard one at start; a cap above it is warned of")
    func openFileLimit() async throws {
        for (cap, warned) in [("10000", true), ("1000", false)] {
            // A shell's usual 1,024 under a hard limit of 4,096.
            let server = try Executable(
                "/bin/sh",
                [
                    "-c", "ulimit -Sn 1024 && ulimit -Hn 4096 && exec \"$0\" \"$@\"",
                    Executable.productsDirectory + "/server", "--host", "127.0.0.1", "--port", "0",
                    "--max-connections", cap,
                ])
            defer { server.terminate() }
            await server.wait { $0.stderr.contains("listening on") || !$0.isRunning }
            #expect(
                server.stderr.contains(
                    "--max-connections 10000 is more than the open-file limit allows (4096, the hard limit): about 4032"
                ) == warned, "\(server.stderr)")
            let limits = try String(contentsOfFile: "/proc/\(server.pid)/limits", encoding: .utf8)
            let line = try #require(limits.split(separator: "\n").first { $0.hasPrefix("Max open files") })
            let values = line.split(separator: " ").dropFirst(3).prefix(2).map(String.init)
            #expect(values == ["4096", "4096"], "soft and hard: \(line)")
        }
    }

    @Test("shell completion scripts come from the argument parser")
    func completion() throws {
        for shell in ["bash", "zsh", "fish"] {
            let result = try run(
                Executable.productsDirectory + "/server", ["--generate-completion-script", shell])
            #expect(result.status == 0 && result.output.contains("--proxy-protocol"), "\(shell)")
        }
    }
}
