import Foundation
import LengthEcho
import LengthEchoCore
import LengthEchoTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A backend that misbehaves on purpose, one connection after another, as a dying or draining server does.
final class ScriptedBackend: @unchecked Sendable {
    enum Turn {
        /// Reads the message and closes without a word (a drain, a backend going away).
        case closeBeforeReply
        /// Answers, then closes (as the original C server does).
        case replyAndClose
        /// Writes half of the reply, then closes.
        case cutReply
    }

    let port: Int
    private let fd: Int32

    init(_ turns: [Turn]) throws {
        let (fd, port) = try bindLoopback()
        guard listen(fd, 64) == 0 else { throw RawSocket.Failure(description: "listen failed") }
        self.fd = fd
        self.port = port
        Thread {
            for turn in turns {
                let client = accept(fd, nil, nil)
                guard client >= 0 else { return }
                var buffer = [UInt8](repeating: 0, count: 1024)
                let n = read(client, &buffer, buffer.count)
                if n > 0, turn != .closeBeforeReply {
                    let message = buffer.prefix(while: { $0 != 0 })
                    var reply = Array("\(message.count) : ".utf8) + message + [0]
                    if turn == .cutReply { reply = Array(reply.prefix(reply.count / 2)) }
                    _ = reply.withUnsafeBytes { Glibc.write(client, $0.baseAddress, $0.count) }
                }
                Glibc.close(client)
            }
        }.start()
    }

    deinit {
        Glibc.close(self.fd)
    }
}

@Suite("Resending a message whose reply had not begun", .timeLimit(.minutes(1)))
struct ResendTests {
    @Test("the client resends once the connection closes before the reply began, and counts it apart from errors")
    func clientResends() async throws {
        let backend = try ScriptedBackend([.closeBeforeReply, .replyAndClose, .replyAndClose])
        let client = LengthEchoClient(configuration: ClientConfiguration(port: backend.port))
        #expect(try await client.send(bytes("again")).text == "5 : again")
        #expect(await client.resends == 1)
        // The server closed after that reply: the next message reconnects.
        #expect(try await client.send(bytes("next")).text == "4 : next")
        #expect(await client.reconnects == 1)
        await client.close()
    }

    @Test("a reply cut off part-way is an error, never resent; a server that always closes gives up after 3 resends")
    func clientErrors() async throws {
        let cut = try ScriptedBackend([.cutReply, .replyAndClose])
        let client = LengthEchoClient(configuration: ClientConfiguration(port: cut.port))
        await #expect(throws: LengthEchoError.self) { try await client.send(bytes("message")) }
        #expect(await client.resends == 0)
        await client.close()

        let closer = try ScriptedBackend(Array(repeating: .closeBeforeReply, count: 4))
        let stubborn = LengthEchoClient(configuration: ClientConfiguration(port: closer.port))
        await #expect(throws: LengthEchoError.closedBeforeReply) { try await stubborn.send(bytes("message")) }
        #expect(await stubborn.resends == LengthEchoClient.mostResends)
        await stubborn.close()
    }

    @Test("bench resends and reconnects without counting errors; a cut reply is an error")
    func bench() async throws {
        let backend = try ScriptedBackend(
            [.closeBeforeReply, .replyAndClose, .closeBeforeReply, .replyAndClose, .replyAndClose])
        let run = try Executable(
            "bench",
            ["--port", "\(backend.port)", "--mode", "persistent", "-c", "1", "--threads", "1", "-n", "3", "--json"])
        #expect(await run.exitStatus() == 0, "\(run.stderr)")
        let result = try #require(
            try JSONSerialization.jsonObject(with: Data(run.stdout.utf8)) as? [String: Any], "\(run.stdout)")
        #expect(result["requests"] as? Int == 3)
        // Two closes before a reply, and two closes after one: the next message had usually gone out on the
        // closing connection already (a resend), or not yet (a reconnect).
        #expect((result["resends"] as? Int ?? 0) >= 2)
        #expect((result["resends"] as? Int ?? 0) + (result["reconnects"] as? Int ?? 0) == 4, "\(result)")
        #expect((result["errors"] as? [String: Int])?.isEmpty == true, "\(result)")

        let cut = try ScriptedBackend([.cutReply, .replyAndClose])
        let cutRun = try Executable(
            "bench",
            ["--port", "\(cut.port)", "--mode", "per-request", "-c", "1", "--threads", "1", "-n", "2", "--json"])
        #expect(await cutRun.exitStatus() == 0, "\(cutRun.stderr)")
        #expect(cutRun.stdout.contains("\"closed early\":1"), "\(cutRun.stdout)")
    }
}
