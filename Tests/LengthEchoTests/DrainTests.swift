import LengthEcho
import LengthEchoCore
import LengthEchoTLS
import LengthEchoTestSupport
import NIOCore
import Synchronization
import Testing

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
    private func perRequestLoad(tls: Bool) async throws -> Outcomes {
        let certificates = try await TestCertificates.main.value
        let serverContext = try certificates.serverContext()
        let server = try await startServer { if tls { $0.tls = serverContext } }
        var settings = ClientConfiguration(port: server.port)
        if tls {
            settings.tls = try certificates.clientContext()
            settings.serverName = "localhost"
        }
        let configuration = settings
        let outcomes = Outcomes()
        let before = tls ? 200 : 1000
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<16 {
                group.addTask { [configuration] in
                    for _ in 0..<100_000 {
                        let client = LengthEchoClient(configuration: configuration)
                        defer { Task { await client.close() } }
                        do {
                            _ = try await client.send(bytes("m"))
                            outcomes.answered.add(1, ordering: .relaxed)
                        } catch LengthEchoError.connectionRefused {
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

    @Test("per-request load, plaintext and TLS: every accepted connection's message is answered", arguments: [false, true])
    func perRequest(tls: Bool) async throws {
        let outcomes = try await self.perRequestLoad(tls: tls)
        let other = outcomes.other.withLock { $0 }
        #expect(other.isEmpty, "\(other.count) requests failed otherwise: \(Set(other))")
        #expect(outcomes.refused.load(ordering: .relaxed) == 16)
    }
}
