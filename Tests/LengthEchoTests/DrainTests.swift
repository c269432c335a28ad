import LengthEcho
import LengthEchoCore
import LengthEchoTLS
import LengthEchoTestSupport
import NIOCore
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Stopping under load: what the server accepted, it answers.
@Suite("Draining under load", .timeLimit(.minutes(1)))
struct DrainTests {
    /// What the clients saw: replies, connects refused once the listeners closed, and anything else.
    final class Outcomes: Sendable {
        let answered = Atomic<Int>(0)
        let refused = Atomic<Int>(0)
        let other = Mutex<[String]>([])
    }

    /// Clients that each open a new connection per message (as the original client does) until the server
    /// refuses connections; the server drains once `before` messages have been answered.
    private func load(tls: Bool, persistent: Bool) async throws -> Outcomes {
        let certificates = try await TestCertificates.main.value
        let serverContext = certificates.serverSettings()
        let server = try await startServer { if tls { $0.tls = serverContext } }
        var settings = ClientConfiguration(port: server.port)
        if tls {
            settings.tls = try certificates.clientContext()
            settings.serverName = "localhost"
            settings.handshakeTimeout = .seconds(3)
        }
        let configuration = settings
        let outcomes = Outcomes()
        let before = tls ? 200 : 1000
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<16 {
                group.addTask { [configuration] in
                    let kept = LengthEchoClient(configuration: configuration)
                    defer { Task { await kept.close() } }
                    for _ in 0..<100_000 {
                        let client = persistent ? kept : LengthEchoClient(configuration: configuration)
                        defer { if !persistent { Task { await client.close() } } }
                        // Connected, and over TLS handshaken: from here on the server has accepted the connection.
                        do {
                            try await client.connect()
                        } catch {
                            // Refused once the listeners closed, or connected in the kernel's listen backlog and
                            // reset by it when the listener closed: never accepted, for the client and the server.
                            outcomes.refused.add(1, ordering: .relaxed)
                            return
                        }
                        do {
                            _ = try await client.send(bytes("m"))
                            outcomes.answered.add(1, ordering: .relaxed)
                        } catch LengthEchoError.connectionRefused {
                            // Persistent: reconnecting after the last reply.
                            outcomes.refused.add(1, ordering: .relaxed)
                            return
                        } catch  where (persistent || !tls) && Self.resetInBacklog(error) {
                            // Persistent: the reconnection after the last reply was in the backlog. Plaintext: a
                            // connect succeeds in the backlog too, so a reset there looks like this from here.
                            outcomes.refused.add(1, ordering: .relaxed)
                            return
                        } catch {
                            outcomes.other.withLock { $0.append("\(error)") }
                            return
                        }
                    }
                }
            }
            group.addTask { [configuration] in
                // Each client's next message follows its last reply at once: wait until enough went by.
                let watcher = LengthEchoClient(configuration: configuration)
                while outcomes.answered.load(ordering: .relaxed) < before {
                    _ = try await watcher.send(bytes("watching"))
                }
                await watcher.close()
                await server.shutdown()
            }
            try await group.waitForAll()
        }
        return outcomes
    }

    /// A reset before anything was answered: the read of the first reply on a connection the kernel had in
    /// its listen backlog, or, over TLS, the handshake of a reconnection. (Over TLS, a connection the server
    /// accepted and then closed unanswered fails after its handshake, which only an accepting server completes.)
    static func resetInBacklog(_ error: any Error) -> Bool {
        switch error {
        case LengthEchoError.closedBeforeReply, LengthEchoError.connectFailed, ChannelError.ioOnClosedChannel:
            return true
        case let error as TLSError:
            // A reconnection that reached the kernel but no server: reset, or left unanswered until the timeout.
            return error.kind == .handshake || error.kind == .handshakeTimeout
        default:
            return "\(error)".contains("Connection reset by peer")
        }
    }

    @Test(
        "per-request load, plaintext and TLS: every accepted connection's message is answered",
        arguments: [false, true])
    func perRequest(tls: Bool) async throws {
        let outcomes = try await self.load(tls: tls, persistent: false)
        let other = outcomes.other.withLock { $0 }
        #expect(other.isEmpty, "\(other.count) requests failed otherwise: \(Set(other))")
        #expect(outcomes.refused.load(ordering: .relaxed) == 16)
    }

    @Test(
        "persistent load, plaintext and TLS: each connection's last reply arrives whole; then connects are refused",
        arguments: [false, true]
    )
    func persistent(tls: Bool) async throws {
        // The client library sends again on a new connection when the server closed after a reply.
        let outcomes = try await self.load(tls: tls, persistent: true)
        let other = outcomes.other.withLock { $0 }
        #expect(other.isEmpty, "\(other.count) requests failed otherwise: \(Set(other))")
        #expect(outcomes.refused.load(ordering: .relaxed) == 16)
    }
}

@Suite("The drain's connection lines", .timeLimit(.minutes(1)))
struct DrainLineTests {
    @Test(
        "a connection closed by the drain after its half-sent message is answered is logged end=drained (so no error is counted)"
    )
    func halfSentMessage() async throws {
        // The drain timeout is far longer than the test needs: under a loaded suite this test's task can wait
        // seconds for a thread between the drain's start and its next write, and the connection must still be
        // open to finish its message then (a 5 s timeout once closed it first: end=drain-timeout, no reply).
        let (server, port) = try await startServerExecutable([
            "--quiet", "--log-format", "json", "--drain-timeout", "40",
        ])
        defer { server.terminate(signal: SIGKILL) }
        let socket = try await blocking { () -> RawSocket in
            let socket = try RawSocket.connect(port: port)
            try socket.write(bytes("half a mess"))
            return socket
        }
        server.terminate()
        await server.wait(seconds: 10) { $0.stderr.contains("draining") || !$0.isRunning }
        try await blocking { try socket.write(bytes("age") + [0]) }
        #expect(try await blocking { try socket.readReplyText() } == "14 : half a message")
        let line = try #require(await waitForConnectionLines(server, count: 1).first)
        #expect(line["end"] as? String == "drained", "\(line)")
        #expect(line["detail"] == nil, "\(line)")
        #expect(await server.exitStatus() == 0)
    }
}

extension DrainLineTests {
    @Test(
        "text log: the drain says how many connections in good English, and every connection line comes before `stopped`"
    )
    func order() async throws {
        let (server, port) = try await startServerExecutable(["--quiet", "--drain-timeout", "5"])
        defer { server.terminate(signal: SIGKILL) }
        let socket = try await blocking { () -> RawSocket in
            let socket = try RawSocket.connect(port: port)
            try socket.write(bytes("one") + [0])
            _ = try socket.readReply()
            return socket
        }
        server.terminate()
        #expect(await server.exitStatus() == 0)
        _ = socket
        let lines = server.stderr.split(separator: "\n")
        #expect(lines.contains("server: SIGTERM, draining 1 connection"), "\(server.stderr)")
        #expect(lines.last == "server: stopped", "\(server.stderr)")
        #expect(lines.contains { $0.contains("connection ended") && $0.contains("end=drained") }, "\(server.stderr)")
    }
}
