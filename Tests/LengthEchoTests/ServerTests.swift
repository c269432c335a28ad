import Foundation
import LengthEcho
import LengthEchoCore
import LengthEchoTestSupport
import NIOCore
import Synchronization
import Testing

@Suite("Plaintext server and client over real sockets", .timeLimit(.minutes(1)))
struct ServerTests {
    @Test("the client gets `11 : test_string`")
    func roundTrip() async throws {
        let server = try await startServer()
        let client = LengthEchoClient(configuration: ClientConfiguration(port: server.port))
        let reply = try await client.send(bytes("test_string"))
        #expect(reply.text == "11 : test_string")
        #expect(try await client.send(bytes("안녕")).text == "6 : 안녕")
        #expect(try await client.send([]).text == "0 : ")
        await client.close()
        await server.shutdown()
    }

    @Test("the server prints each message it receives")
    func onMessage() async throws {
        let seen = Mutex<[[UInt8]]>([])
        let server = try await startServer {
            $0.onMessage = { message, _ in seen.withLock { $0.append(Array(message.readableBytesView)) } }
        }
        let client = LengthEchoClient(configuration: ClientConfiguration(port: server.port))
        _ = try await client.send(bytes("one"))
        _ = try await client.send(bytes("two"))
        await client.close()
        await server.shutdown()
        #expect(seen.withLock { $0 } == [bytes("one"), bytes("two")])
    }

    @Test("200 concurrent clients are all answered correctly")
    func concurrentClients() async throws {
        let server = try await startServer()
        let port = server.port
        try await withThrowingTaskGroup(of: Void.self) { group in
            for index in 0..<200 {
                group.addTask {
                    let client = LengthEchoClient(configuration: ClientConfiguration(port: port))
                    let message = "client-\(index)-" + String(repeating: "x", count: index)
                    let reply = try await client.send(bytes(message))
                    #expect(reply.text == "\(message.utf8.count) : \(message)")
                    await client.close()
                }
            }
            try await group.waitForAll()
        }
        await server.shutdown()
    }

    @Test("1000 pipelined messages on one connection come back in order")
    func pipelined() async throws {
        let server = try await startServer()
        let client = LengthEchoClient(configuration: ClientConfiguration(port: server.port))
        let messages = (0..<1000).map { bytes("message \($0)") }
        let replies = try await client.send(pipelined: messages)
        #expect(replies.map(\.text) == messages.map { "\($0.count) : \(String(decoding: $0, as: UTF8.self))" })
        await client.close()
        await server.shutdown()
    }

    @Test("large and small messages pipelined together come back whole and in order")
    func mixedSizes() async throws {
        let server = try await startServer()
        let client = LengthEchoClient(configuration: ClientConfiguration(port: server.port))
        let messages = [1, 20_000, 3, 100_000, 16 * 1024, 0, 7].enumerated().map { index, size in
            (0..<size).map { UInt8(0x41 + ($0 + index) % 26) }
        }
        let replies = try await client.send(pipelined: messages)
        #expect(replies.map(\.bytes) == messages.map { bytes("\($0.count) : ") + $0 })
        await client.close()
        await server.shutdown()
    }

    @Test("a 1 MiB message, the default limit, is echoed whole")
    func oneMebibyte() async throws {
        let server = try await startServer()
        let client = LengthEchoClient(configuration: ClientConfiguration(port: server.port))
        let message = (0..<(1 << 20)).map { UInt8(0x41 + $0 % 26) }
        let reply = try await client.send(message)
        #expect(reply.length == 1 << 20)
        #expect(reply.bytes.count == "1048576 : ".utf8.count + (1 << 20))
        await client.close()
        await server.shutdown()
    }

    @Test("the original C client's bytes: message and NUL, read until NUL; one byte per segment works too")
    func originalClientBytes() async throws {
        let server = try await startServer()
        let port = server.port
        try await blocking {
            let socket = try RawSocket.connect(port: port)
            try socket.write(bytes("test_string\0"))
            #expect(try socket.readReplyText() == "11 : test_string")
            // The same connection, a message dribbled out a byte at a time, then two in one write.
            socket.setNoDelay()
            for byte in bytes("split\0") { try socket.write([byte]) }
            #expect(try socket.readReplyText() == "5 : split")
            try socket.write(bytes("a\0bc\0"))
            #expect(try socket.readReplyText() == "1 : a")
            #expect(try socket.readReplyText() == "2 : bc")
        }
        await server.shutdown()
    }

    @Test("over IPv6 loopback the same bytes get the same reply", .enabled(if: ipv6LoopbackAvailable()))
    func ipv6Loopback() async throws {
        let server = try await startServer { $0.hosts = ["127.0.0.1", "::1"] }
        #expect(server.localAddresses.count == 2)
        let port = server.port
        try await blocking {
            let socket = try RawSocket.connect(port: port, ipv6: true)
            try socket.write(bytes("test_string\0"))
            #expect(try socket.readReplyText() == "11 : test_string")
        }
        var configuration = ClientConfiguration(host: "::1", port: port)
        configuration.connectTimeout = .seconds(5)
        let client = LengthEchoClient(configuration: configuration)
        #expect(try await client.send(bytes("v6")).text == "2 : v6")
        await client.close()
        await server.shutdown()
    }

    @Test("bytes left when the client half-closes are answered, then the server closes")
    func halfClose() async throws {
        let server = try await startServer()
        let port = server.port
        try await blocking {
            let socket = try RawSocket.connect(port: port)
            try socket.write(bytes("x\0hello"))
            socket.shutdownWrite()
            #expect(try socket.readToEnd() == bytes("1 : x\05 : hello\0"))
        }
        await server.shutdown()
    }

    @Test("our client against a one-shot server like the original, reply ended by NUL or by close")
    func againstOriginalStyleServer() async throws {
        for terminate in [true, false] {
            let original = try OriginalStyleServer(connections: 3, terminate: terminate)
            let client = LengthEchoClient(configuration: ClientConfiguration(port: original.port))
            #expect(try await client.send(bytes("test_string")).text == "11 : test_string")
            #expect(try await client.send(bytes("안녕")).text == "6 : 안녕")
            #expect(try await client.send(bytes("again")).text == "5 : again")
            #expect(original.accepted == 3)
            await client.close()
        }
    }

    @Test("the client says when a server truncates a long message, as the original's 1024-byte read does")
    func truncatingServer() async throws {
        let original = try OriginalStyleServer(connections: 1, terminate: true)
        let client = LengthEchoClient(configuration: ClientConfiguration(port: original.port))
        // One read() of at most 1023 bytes: the echo is short, and the client names the mismatch.
        await #expect {
            try await client.send([UInt8](repeating: 0x61, count: 5000))
        } throws: { error in
            guard case LengthEchoError.replyMismatch(let sent, let echoed) = error else { return false }
            return sent == 5000 && echoed > 0 && echoed <= 1023
        }
        await client.close()
    }

    @Test("an oversize message gets one `error:` line, even while the client keeps sending, then EOF")
    func oversize() async throws {
        let server = try await startServer { $0.maximumMessageLength = 1024 }
        let port = server.port
        try await blocking {
            let socket = try RawSocket.connect(port: port)
            // Keep sending well past the limit; the error must still arrive intact.
            let sender = Thread {
                let chunk = [UInt8](repeating: 0x61, count: 16 * 1024)
                for _ in 0..<64 { if (try? socket.write(chunk)) == nil { return } }
            }
            sender.start()
            let reply = try socket.readReplyText()
            #expect(reply == "error: message exceeds the 1024-byte limit")
            #expect(try socket.readToEnd().isEmpty)
        }
        // Through the client library, the error is a clear Swift error.
        let client = LengthEchoClient(configuration: ClientConfiguration(port: port))
        await #expect(throws: LengthEchoError.serverError("message exceeds the 1024-byte limit")) {
            try await client.send([UInt8](repeating: 0x61, count: 2000))
        }
        #expect(try await client.send(bytes("still serving")).text == "13 : still serving")
        await client.close()
        await server.shutdown()
    }

    @Test("a peer stalled mid-message is told and closed; an idle one is closed; others are served meanwhile")
    func idleTimeout() async throws {
        let server = try await startServer { $0.idleTimeout = .milliseconds(300) }
        let port = server.port
        try await blocking {
            let stalled = try RawSocket.connect(port: port)
            try stalled.write(bytes("half a mess"))
            let idle = try RawSocket.connect(port: port)
            // While both stall, another client is answered.
            let other = try RawSocket.connect(port: port)
            try other.write(bytes("ping\0"))
            #expect(try other.readReplyText() == "4 : ping")
            #expect(try stalled.readReplyText()?.hasPrefix("error: timed out") == true)
            #expect(try stalled.readToEnd().isEmpty)
            #expect(try idle.readToEnd().isEmpty)
        }
        await server.shutdown()
    }

    @Test("a client that never reads its replies is stopped by backpressure, and others are still served")
    func slowReader() async throws {
        let server = try await startServer()
        let port = server.port
        try await blocking {
            let hog = try RawSocket.connect(port: port, timeout: 1)
            // Pipeline many large messages and read none of the replies: the server must stop reading
            // from this client instead of buffering without bound.
            let message = [UInt8](repeating: 0x62, count: 64 * 1024) + [0]
            var accepted = 0
            for _ in 0..<512 {
                if (try? hog.write(message)) == nil { break }
                accepted += 1
            }
            // 32 MiB is far more than the kernel buffers both ways can hold: had the server gone on reading
            // (and queueing replies in memory), every write would have been taken.
            #expect(accepted < 512, "the server read all 32 MiB from a client that reads nothing")
            let other = try RawSocket.connect(port: port)
            try other.write(bytes("ping\0"))
            #expect(try other.readReplyText() == "4 : ping")
        }
        await server.shutdown()
    }

    @Test("connections over the cap get `error: server busy` and the others keep working")
    func connectionCap() async throws {
        let server = try await startServer { $0.maximumConnections = 2 }
        let port = server.port
        try await blocking {
            let first = try RawSocket.connect(port: port)
            let second = try RawSocket.connect(port: port)
            for socket in [first, second] {
                try socket.write(bytes("hi\0"))
                #expect(try socket.readReplyText() == "2 : hi")
            }
            let third = try RawSocket.connect(port: port)
            #expect(try third.readReplyText()?.hasPrefix("error: server busy") == true)
            try first.write(bytes("ok\0"))
            #expect(try first.readReplyText() == "2 : ok")
        }
        await server.shutdown()
    }

    /// Runs one step of a test, naming it in the error if it fails.
    static func step<T>(_ name: String, _ body: () throws -> T) throws -> T {
        do { return try body() } catch { throw RawSocket.Failure(description: "\(name): \(error)") }
    }

    @Test("shutdown drains: a message in flight is answered, idle connections close, then it stops")
    func drain() async throws {
        // The drain timeout bounds the wait below, whatever the grace and the sweep do.
        let server = try await startServer { $0.drainTimeout = .seconds(4) }
        let port = server.port
        let (busy, idle) = try await blocking {
            let busy = try RawSocket.connect(port: port)
            let idle = try RawSocket.connect(port: port)
            try busy.write(bytes("warm\0"))
            #expect(try busy.readReplyText() == "4 : warm")
            try idle.write(bytes("warm\0"))
            #expect(try idle.readReplyText() == "4 : warm")
            try busy.write(bytes("in fli"))
            return (busy, idle)
        }
        let shutdown = Task { await server.shutdown() }
        try await blocking {
            #expect(try Self.step("idle closed") { try idle.readToEnd() }.isEmpty)  // the drain has begun
            try busy.write(bytes("ght\0"))
            #expect(try Self.step("in flight answered") { try busy.readReplyText() } == "9 : in flight")
            #expect(try Self.step("busy closed") { try busy.readToEnd() }.isEmpty)
        }
        await shutdown.value
        #expect(server.connectionCount == 0)
    }

    @Test("binding a port in use fails with a clear reason")
    func portInUse() async throws {
        let server = try await startServer()
        let port = server.port
        await #expect {
            _ = try await startServer { $0.port = port }
        } throws: { error in
            "\(error)".contains("port \(port) is already in use")
        }
        await server.shutdown()
    }

    @Test("a server that never answers is a reply timeout, not a hang")
    func replyTimeout() async throws {
        // Listening but never accepting: the connection completes in the backlog and nothing is ever read.
        let (fd, port) = try bindLoopback()
        defer { close(fd) }
        #expect(listen(fd, 4) == 0)
        var configuration = ClientConfiguration(port: port)
        configuration.replyTimeout = .milliseconds(300)
        let client = LengthEchoClient(configuration: configuration)
        await #expect(throws: LengthEchoError.replyTimeout(seconds: 0.3)) { try await client.send(bytes("anyone?")) }
        #expect(LengthEchoError.replyTimeout(seconds: 0.3).description == "no reply within 0.3 s")
        await client.close()
    }

    @Test("client errors: refused says no server is running; unknown hosts are named")
    func clientErrors() async throws {
        // A port that is bound but not listening refuses connections, and no other test can take it.
        let closed = try ClosedPort()
        let port = closed.port
        let client = LengthEchoClient(configuration: ClientConfiguration(port: port))
        await #expect(throws: LengthEchoError.connectionRefused(host: "127.0.0.1", port: port)) {
            try await client.send(bytes("x"))
        }
        let unknown = LengthEchoClient(configuration: ClientConfiguration(host: "no-such-host.invalid", port: port))
        await #expect(throws: LengthEchoError.hostNotFound("no-such-host.invalid")) {
            try await unknown.send(bytes("x"))
        }
        await #expect(throws: LengthEchoError.messageContainsTerminator(.nul)) {
            try await client.send([0x61, 0, 0x62])
        }
    }
}
