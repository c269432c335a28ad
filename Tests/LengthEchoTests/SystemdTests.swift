import Foundation
import LengthEcho
import LengthEchoCore
import LengthEchoTestSupport
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A datagram socket standing in for systemd's notify socket: what the service tells systemd.
final class NotifySocket: @unchecked Sendable {
    let path: String
    private let fd: Int32

    init() throws {
        self.path = NSTemporaryDirectory() + "length-echo-notify-\(getpid())-\(UUID().uuidString.prefix(8))"
        self.fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in self.path.utf8.enumerated() { raw[index] = byte }
        }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(self.fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard bound == 0 else { throw RawSocket.Failure(description: "bind \(self.path): \(errno)") }
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(self.fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    /// The next datagram (within 10 s), or nil.
    func next() -> String? {
        var buffer = [UInt8](repeating: 0, count: 4096)
        let n = recv(self.fd, &buffer, buffer.count, 0)
        return n > 0 ? String(decoding: buffer[..<n], as: UTF8.self) : nil
    }

    /// Datagrams until one contains `text` (at most `limit` of them, each within 10 s).
    func until(_ text: String, limit: Int = 20) -> [String] {
        var seen: [String] = []
        for _ in 0..<limit {
            guard let message = self.next() else { break }
            seen.append(message)
            if message.contains(text) { break }
        }
        return seen
    }

    deinit {
        close(self.fd)
        unlink(self.path)
    }
}

/// Connection lines a server (text format) has logged so far.
func connectionCount(_ server: Executable) -> Int {
    server.stderr.components(separatedBy: "connection ended").count - 1
}

/// A listening TCP socket on `host`, port picked by the system: as systemd's socket unit would hold it.
func listeningSocket(host: String) throws -> (fd: Int32, port: Int) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    inet_pton(AF_INET, host, &address.sin_addr)
    let bound = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard bound == 0, listen(fd, 256) == 0 else { throw RawSocket.Failure(description: "listen: \(errno)") }
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
    }
    return (fd, Int(UInt16(bigEndian: address.sin_port)))
}

@Suite("Run by systemd: notify, watchdog, socket activation, the units", .timeLimit(.minutes(1)))
struct SystemdTests {
    @Test("notify: READY=1 once listening, RELOADING=1 with MONOTONIC_USEC then READY=1 on SIGHUP, STOPPING=1")
    func notify() async throws {
        let certificates = try await TestCertificates.main.value
        let notify = try NotifySocket()
        let server = try Executable(
            "server",
            [
                "--host", "127.0.0.1", "--port", "0", "--quiet", "--tls", "--cert", certificates.serverCertificate,
                "--key", certificates.serverKey,
            ],
            environment: ["NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "200000"])
        defer { server.terminate(signal: SIGKILL) }
        let ready = try await blocking { notify.until("READY=1") }
        #expect(ready.last?.contains("STATUS=serving on 127.0.0.1:") == true, "\(ready)")
        let pings = try await blocking { notify.until("WATCHDOG=1") }
        #expect(pings.last == "WATCHDOG=1", "the watchdog asked for pings every 0.1 s: \(pings)")
        server.terminate(signal: SIGHUP)
        let reload = try await blocking { notify.until("READY=1").filter { $0 != "WATCHDOG=1" } }
        #expect(reload.count == 2, "\(reload)")
        #expect(reload.first?.hasPrefix("RELOADING=1\nMONOTONIC_USEC=") == true, "\(reload)")
        #expect(reload.last?.hasPrefix("READY=1") == true, "\(reload)")
        server.terminate()
        let stopping = try await blocking { notify.until("STOPPING=1").filter { $0 != "WATCHDOG=1" } }
        #expect(stopping.last?.hasPrefix("STOPPING=1\nSTATUS=SIGTERM, draining") == true, "\(stopping)")
        #expect(await server.exitStatus() == 0)
    }

    @Test("socket activation: under systemd-socket-activate it serves the socket it was handed and binds nothing else")
    func socketActivate() async throws {
        let tool = try #require(
            ["/usr/bin/systemd-socket-activate", "/bin/systemd-socket-activate"].first {
                FileManager.default.isExecutableFile(atPath: $0)
            }, "systemd-socket-activate is missing (Debian's systemd package)")
        let (fd, port) = try listeningSocket(host: "127.0.0.78")
        close(fd)  // only to find a free port on an address no other test binds
        let server = try Executable(
            tool, ["-l", "127.0.0.78:\(port)", Executable.productsDirectory + "/server", "--quiet"])
        defer { server.terminate(signal: SIGKILL) }
        // The tool listens, and starts the server at the first connection, handing it the socket.
        await server.wait(seconds: 10) { $0.stderr.contains("Listening on") || !$0.isRunning }
        var configuration = ClientConfiguration(host: "127.0.0.78", port: port)
        configuration.connectTimeout = .seconds(5)
        let client = LengthEchoClient(configuration: configuration)
        #expect(try await client.send(bytes("activated")).text == "9 : activated")
        await client.close()
        await server.wait(seconds: 10) { $0.stderr.contains("listening on") || !$0.isRunning }
        let line = try #require(server.stderr.split(separator: "\n").first { $0.contains("server: listening on") })
        #expect(line == "server: listening on 127.0.0.78:\(port) (plaintext)", "it binds nothing else: \(line)")
        server.terminate()
        #expect(await server.exitStatus() == 0)
    }

    @Test("a restart on a socket held for it (as systemd holds it) loses no connection attempt")
    func restartLosesNothing() async throws {
        let (fd, port) = try listeningSocket(host: "127.0.0.79")
        defer { close(fd) }
        // LISTEN_PID must be the server's own: the shell sets it to its PID, then becomes the server.
        let start = {
            try Executable(
                "/bin/sh",
                [
                    "-c", "LISTEN_PID=$$ exec \"$0\" \"$@\"", Executable.productsDirectory + "/server", "--quiet",
                    "--drain-timeout", "5",
                ],
                environment: ["LISTEN_FDS": "1"], passing: [fd])
        }
        var server = try start()
        await server.wait(seconds: 10) { $0.stderr.contains("listening on") || !$0.isRunning }
        // A client that keeps connecting, one message per connection, while the server restarts.
        let stop = Atomic<Bool>(false)
        let client = Task.detached { () -> (answered: Int, failed: [String]) in
            var answered = 0
            var failed: [String] = []
            let started = Date()
            // Until both restarts are done (bounded in count and time).
            while !stop.load(ordering: .relaxed) && answered + failed.count < 50_000
                && Date().timeIntervalSince(started) < 30
            {
                do {
                    let socket = try RawSocket.connect(host: "127.0.0.79", port: port)
                    try socket.write(bytes("again") + [0])
                    if try socket.readReplyText() == "5 : again" { answered += 1 } else { failed.append("no reply") }
                } catch {
                    failed.append("\(error)")
                }
                if Task.isCancelled { break }
            }
            return (answered, failed)
        }
        for _ in 0..<2 {
            // Some answered by this server first.
            let before = connectionCount(server)
            await server.wait(seconds: 10) { connectionCount($0) > before + 20 || !$0.isRunning }
            server.terminate()
            #expect(await server.exitStatus() == 0)
            server = try start()
            await server.wait(seconds: 10) { $0.stderr.contains("listening on") || !$0.isRunning }
        }
        stop.store(true, ordering: .relaxed)
        let outcome = await client.value
        server.terminate()
        _ = await server.exitStatus()
        #expect(outcome.failed.isEmpty, "\(outcome.failed.prefix(5))")
        #expect(outcome.answered > 0)
        print("SystemdTests: \(outcome.answered) connections answered across two restarts, none lost")
    }

    @Test("the shipped units pass systemd-analyze verify")
    func units() throws {
        let analyze = try #require(
            ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"].first {
                FileManager.default.isExecutableFile(atPath: $0)
            },
            "systemd-analyze is missing (Debian's systemd package)")
        // A root holding the binary where the README's install step puts it, the units, and what they refer to
        // on a Debian system (systemd's own units, /bin/kill): verify checks that every command exists.
        let root = NSTemporaryDirectory() + "length-echo-units-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: root) }
        let manager = FileManager.default
        try? manager.removeItem(atPath: root)
        for folder in ["/usr/local/bin", "/usr/bin", "/usr/lib/systemd", "/etc/systemd/system"] {
            try manager.createDirectory(atPath: root + folder, withIntermediateDirectories: true)
        }
        try manager.copyItem(atPath: "/usr/lib/systemd/system", toPath: root + "/usr/lib/systemd/system")
        try manager.copyItem(atPath: "/usr/bin/kill", toPath: root + "/usr/bin/kill")
        try manager.createSymbolicLink(atPath: root + "/bin", withDestinationPath: "usr/bin")
        try manager.copyItem(
            atPath: Executable.productsDirectory + "/server", toPath: root + "/usr/local/bin/length-echo-server")
        for unit in ["length-echo.service", "length-echo.socket"] {
            try manager.copyItem(
                atPath: TestCertificates.packageRoot + "/deploy/systemd/" + unit,
                toPath: root + "/etc/systemd/system/" + unit)
        }
        let result = try run(
            analyze,
            [
                // man:length-echo-server(1) is installed from scripts/man-pages.sh (docs/operations.md), not here:
                // `documentationAnchor` holds its name, scripts/docs.sh renders the page.
                "verify", "--man=no", "--root", root, root + "/etc/systemd/system/length-echo.service",
                root + "/etc/systemd/system/length-echo.socket",
            ])
        #expect(result.status == 0, "\(result.output)")
        #expect(!result.output.contains("length-echo"), "warnings about the units: \(result.output)")
    }

    @Test("each unit's Documentation= names a heading of a file in this repository, and a manual page it installs")
    func documentationAnchor() throws {
        let root = TestCertificates.packageRoot
        let prefix = "https://github.com/length-echo/length-echo/blob/main/"
        for unit in ["length-echo.service", "length-echo.socket"] {
            let text = try String(contentsOfFile: root + "/deploy/systemd/" + unit, encoding: .utf8)
            let line = try #require(text.split(separator: "\n").first { $0.hasPrefix("Documentation=") })
            let uris = line.dropFirst("Documentation=".count).split(separator: " ")
            #expect(uris.count == 2, "\(unit): \(uris)")
            for uri in uris {
                if uri.hasPrefix("man:") {
                    // scripts/man-pages.sh names the server's page as it is installed.
                    #expect(uri == "man:length-echo-server(1)", "\(unit): \(uri)")
                    continue
                }
                #expect(uri.hasPrefix(prefix), "\(unit): \(uri)")
                let parts = uri.dropFirst(prefix.count).split(separator: "#", maxSplits: 1)
                let path = root + "/" + parts[0]
                #expect(FileManager.default.fileExists(atPath: path), "\(unit): \(uri)")
                let anchor = try #require(parts.count == 2 ? String(parts[1]) : nil, "\(unit): \(uri) has no anchor")
                #expect(
                    LinkTests.anchors(in: path).contains(anchor), "\(unit): \(anchor) is not a heading of \(parts[0])")
            }
        }
    }
}
