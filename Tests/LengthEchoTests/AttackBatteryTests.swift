import Foundation
import LengthEcho
import LengthEchoCore
import LengthEchoTLS
import LengthEchoTestSupport
import Testing

/// The attack battery, against the `server` executable: every slot of a server filled by one kind of cheap peer.
/// For each kind, every slot is freed within a stated bound, a normal client is then served at once, the
/// server's file descriptors return to where they started, and its memory settles near where it started. Each
/// kind has a server of its own, so the kinds run side by side (most of their time is waiting for deadlines).
///
/// Not under a sanitizer (scripts/sanitize.sh sets LENGTH_ECHO_SANITIZER): floods through instrumented servers
/// starve every other test of the 2 cores; the plain `swift test` of .ci/run runs it.
@Suite(
    "Attack battery: cheap peers in every slot",
    .timeLimit(.minutes(3)),
    .enabled(if: ProcessInfo.processInfo.environment["LENGTH_ECHO_SANITIZER"] == nil)
)
struct AttackBatteryTests {
    /// Slots, and the limits that bound each kind of peer.
    static let slots = 4
    static let bound: Double = 8  // seconds: the longest limit below (2 s linger, 2 s message) plus slack

    enum Kind: String, CaseIterable, Sendable {
        case idle = "idle sockets"
        case stalledMidMessage = "half a message, then silence"
        case trickle = "one byte every 0.2 s"
        case nonReader = "large messages, never reading"
        case resetMidMessage = "a reset in the middle of a message"
        case unterminated = "16 MB without a terminator"
        case garbageRecord = "a TLS record of garbage"
        case halfClientHello = "half a ClientHello"
        case plaintextOnTLS = "plaintext on the TLS port"
        case resetMidHandshake = "a reset in the middle of the handshake"

        var needsTLS: Bool {
            switch self {
            case .garbageRecord, .halfClientHello, .plaintextOnTLS, .resetMidHandshake: true
            default: false
            }
        }
    }

    private static func openDescriptors(_ pid: pid_t) -> Int {
        (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count) ?? -1
    }

    /// The server's open descriptors once they are `limit` or fewer, or at `deadline`. Nothing signals another
    /// process's descriptor table changing, so this looks again every 10 ms until then.
    private static func descriptors(of pid: pid_t, fallTo limit: Int, before deadline: Date) async -> Int {
        var count = Self.openDescriptors(pid)
        while count > limit && Date() < deadline {
            try? await Task.sleep(for: .milliseconds(10))
            count = Self.openDescriptors(pid)
        }
        return count
    }

    /// One cheap peer of `kind`, doing its thing; returns whether the server closed it within the bound
    /// (for peers that close themselves, true).
    private static func cheapPeer(_ kind: Kind, port: Int) throws -> Bool {
        switch kind {
        case .idle:
            return try RawSocket.connect(port: port).waitForServerGone(seconds: bound)
        case .stalledMidMessage:
            let peer = try RawSocket.connect(port: port)
            try peer.write("half a mess")
            return peer.waitForServerGone(seconds: bound)
        case .trickle:
            let peer = try RawSocket.connect(port: port)
            for _ in 0..<Int(bound / 0.2) {
                if (try? peer.write([0x61])) == nil || peer.waitForPeerClose(seconds: 0.2) { break }
            }
            return peer.waitForServerGone(seconds: bound)
        case .nonReader:
            let peer = try RawSocket.connect(port: port, receiveBuffer: 4096)
            let message = [UInt8](repeating: 0x61, count: 60_000) + [0]
            for _ in 0..<200 where peer.writeWithoutBlocking(message) == message.count {}
            return peer.waitForServerGone(seconds: bound)
        case .resetMidMessage:
            let peer = try RawSocket.connect(port: port)
            try peer.write("cut short")
            peer.resetOnClose()
            return true
        case .unterminated:
            let peer = try RawSocket.connect(port: port)
            let chunk = [UInt8](repeating: 0x62, count: 1 << 20)
            for _ in 0..<16 where peer.writeWithoutBlocking(chunk) == chunk.count {}
            return peer.waitForServerGone(seconds: bound)
        case .garbageRecord:
            let peer = try RawSocket.connect(port: port)
            try peer.write([0x16, 0x03, 0x01, 0x00, 0x20] + [UInt8](repeating: 0xEE, count: 32))
            return peer.waitForServerGone(seconds: bound)
        case .halfClientHello:
            let peer = try RawSocket.connect(port: port)
            try peer.write([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xFC, 0x03, 0x03])
            return peer.waitForServerGone(seconds: bound)
        case .plaintextOnTLS:
            let peer = try RawSocket.connect(port: port)
            try peer.write("hello\0")
            return peer.waitForServerGone(seconds: bound)
        case .resetMidHandshake:
            let peer = try RawSocket.connect(port: port)
            try peer.write([0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
            peer.resetOnClose()
            return true
        }
    }

    /// The server executable with small limits, its PID and port.
    private static func startExecutable(tls: Bool) async throws -> (Executable, Int) {
        let certificates = try await TestCertificates.main.value
        let flags = [
            "--quiet", "--max-connections", "\(Self.slots)", "--idle-timeout",
            "1",
            "--message-timeout", "2", "--handshake-timeout", "1", "--max-message", "65536",
            "--log-level", "notice",  // a line per cheap peer is not what this test reads
        ]
        return try await startServerExecutable(
            flags + (tls ? ["--tls", "--cert", certificates.serverCertificate, "--key", certificates.serverKey] : [])
        )
    }

    @Test(
        "each kind of cheap peer in every slot loses them within the bound; then a normal client is served",
        arguments: Kind.allCases)
    func battery(kind: Kind) async throws {
        let tls = kind.needsTLS
        let certificates = try await TestCertificates.main.value
        let (server, port) = try await Self.startExecutable(tls: tls)
        defer { server.terminate(signal: SIGKILL) }  // a test that throws must not leave the server running
        var configuration = ClientConfiguration(port: port)
        if tls {
            configuration.tls = try certificates.clientContext()
            configuration.serverName = "localhost"
        }
        // Warm up: the event loops' buffers exist before the baseline is taken.
        let warmup = LengthEchoClient(configuration: configuration)
        #expect(try await warmup.send(bytes("warm")).text == "4 : warm")
        await warmup.close()
        let descriptors = Self.openDescriptors(server.pid)
        let memory = residentKiB(server.pid)

        let started = Date()
        let freed = try await withThrowingTaskGroup(of: Bool.self) { group in
            for _ in 0..<Self.slots {
                group.addTask { try await blocking { try Self.cheapPeer(kind, port: port) } }
            }
            var all = true
            for try await closed in group { all = all && closed }
            return all
        }
        #expect(freed, "\(kind.rawValue): a peer still held its slot after \(Self.bound) s")
        // Every slot is free again: a normal client is served. (A peer that reset has not waited for the
        // server to notice: its slot may take one more turn of the server's loop, so a `server busy`
        // answer is retried, each retry a full exchange with the server, within the bound.)
        var reply: String?
        for _ in 0..<200 where reply == nil && Date().timeIntervalSince(started) < Self.bound + 2 {
            let client = LengthEchoClient(configuration: configuration)
            do {
                reply = try await client.send(bytes("normal")).text
            } catch LengthEchoError.serverError(let reason) where reason.hasPrefix("server busy") {
                reply = nil
            } catch let error as TLSError where error.cause == .peerNotTLS && error.message.contains("server busy") {
                reply = nil  // the refusal comes before any TLS, as a plaintext line
            }
            await client.close()
        }
        #expect(reply == "6 : normal", "\(kind.rawValue)")
        #expect(Date().timeIntervalSince(started) < Self.bound + 2, "\(kind.rawValue)")
        // Every cheap peer's descriptor is gone (the normal client's own may still be closing: one allowed),
        // within the bound. A slot is all the normal client needed: a peer that reset may still be one turn of
        // the server's loop from being noticed, as above.
        let left = await Self.descriptors(of: server.pid, fallTo: descriptors + 1, before: started + Self.bound + 2)
        #expect(left <= descriptors + 1, "\(kind.rawValue): descriptors left open")
        // Memory settles near where it started (the 16 MB peers never got past the 64 KiB limit).
        let after = residentKiB(server.pid)
        #expect(after - memory < 32 * 1024, "resident memory grew from \(memory) KiB to \(after) KiB")
        server.terminate()
        #expect(await server.exitStatus() == 0)
    }

    @Test("a connect flood is refused with `server busy` beyond the cap, and the server serves again after it")
    func connectFlood() async throws {
        let server = try await startServer {
            $0.maximumConnections = Self.slots
            $0.idleTimeout = .milliseconds(500)
        }
        let port = server.port
        let refused = try await blocking { () -> Int in
            var sockets: [RawSocket] = []
            for _ in 0..<200 { sockets.append(try RawSocket.connect(port: port)) }
            // Those over the cap are answered `error: server busy` and closed; the rest are idle.
            return sockets.filter {
                ($0.readable(within: 2) ? (try? $0.readReplyText()) ?? nil : nil)?.contains("server busy") == true
            }.count
        }
        #expect(refused >= 200 - Self.slots)
        let client = LengthEchoClient(configuration: ClientConfiguration(port: port))
        #expect(try await client.send(bytes("after the flood")).text == "15 : after the flood")
        await client.close()
        await server.shutdown()
    }
}
