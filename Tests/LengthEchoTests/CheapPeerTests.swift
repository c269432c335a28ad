import Foundation
import LengthEcho
import LengthEchoCore
import LengthEchoTestSupport
import Testing

/// Peers that try to hold a slot for free: each must lose it within a stated bound while others are served.
@Suite("Cheap peers lose their slots", .timeLimit(.minutes(1)))
struct CheapPeerTests {
    @Test("a peer that sends large messages and never reads loses its slot within the idle timeout (plus slack)")
    func nonReader() async throws {
        let server = try await startServer {
            $0.idleTimeout = .seconds(1)
            $0.maximumConnections = 1
        }
        let port = server.port
        let closed = try await blocking { () -> Bool in
            // A 4 KiB receive window: the server's replies pile up in its kernel buffers, then in its own.
            let hog = try RawSocket.connect(port: port, receiveBuffer: 4096)
            let message = [UInt8](repeating: 0x61, count: 1 << 20 - 1) + [0]
            var sent = 0
            for _ in 0..<16 {  // complete 1 MiB messages, as many as the server takes in (at most 16 MiB)
                let n = hog.writeWithoutBlocking(message)
                sent += n
                if n < message.count { break }
                _ = hog.waitForPeerClose(seconds: 0.05)  // a pause between messages, cut short if it closes
            }
            #expect(sent > 2 << 20, "more than the kernel buffers hold")
            // Bound: the idle timeout once the server stops reading, the sweep's quarter, and slack.
            return hog.waitForPeerClose(seconds: 10)
        }
        #expect(closed, "the non-reading peer still holds its slot")
        // The slot is free again.
        let client = LengthEchoClient(configuration: ClientConfiguration(port: port))
        #expect(try await client.send(bytes("served")).text == "6 : served")
        await client.close()
        await server.shutdown()
    }

    @Test("one byte at a time does not keep a message open past the message timeout")
    func slowloris() async throws {
        let server = try await startServer {
            $0.idleTimeout = .seconds(2)
            $0.messageTimeout = .milliseconds(600)
        }
        let port = server.port
        let reply = try await blocking { () -> String? in
            let slow = try RawSocket.connect(port: port)
            // One byte every 0.2 s, well inside the idle timeout, until the server answers (at most 40).
            for _ in 0..<40 {
                try slow.write([0x61])
                if slow.readable(within: 0.2) { break }
            }
            return try slow.readReplyText()
        }
        #expect(reply == "error: timed out: the message was not finished within 0.6 s (the message timeout)")
        await server.shutdown()
    }

    @Test("a peer silent in the middle of a message is told which limit it hit")
    func idleMidMessage() async throws {
        let server = try await startServer { $0.idleTimeout = .milliseconds(300) }
        let port = server.port
        let reply = try await blocking { () -> String? in
            let stalled = try RawSocket.connect(port: port)
            try stalled.write(bytes("half"))
            return try stalled.readReplyText()
        }
        #expect(reply == "error: timed out: nothing arrived for 0.3 s in the middle of a message (the idle timeout)")
        await server.shutdown()
    }
}
