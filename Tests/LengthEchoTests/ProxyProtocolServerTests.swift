import Foundation
import LengthEcho
import LengthEchoCore
import LengthEchoTestSupport
import Synchronization
import Testing

/// The connection lines of a server run with `--log-format json`, parsed.
func connectionLines(_ server: Executable) -> [[String: Any]] {
    server.stderr.split(separator: "\n").compactMap { line in
        guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
            object["message"] as? String == "connection ended"
        else { return nil }
        return object
    }
}

/// Waits (bounded by the suite's time limit) until the server has logged `count` connection lines.
func waitForConnectionLines(_ server: Executable, count: Int) async -> [[String: Any]] {
    await server.wait { connectionLines($0).count >= count || !$0.isRunning }
    return connectionLines(server)
}

@Suite("Behind a balancer: the PROXY protocol", .timeLimit(.minutes(1)))
struct ProxyProtocolServerTests {
    static let v1 = bytes("PROXY TCP4 203.0.113.7 192.0.2.1 5555 4000\r\n")
    /// v2, PROXY, TCP over IPv4: 203.0.113.8:5556 to 192.0.2.1:4000, with an ALPN TLV.
    static let v2: [UInt8] =
        ProxyProtocol.v2Signature + [0x21, 0x11, 0x00, 0x11] + [203, 0, 113, 8, 192, 0, 2, 1, 0x15, 0xB4, 0x0F, 0xA0]
        + [0x01, 0x00, 0x02, 0x68, 0x32]
    /// v2 LOCAL: a balancer's health check.
    static let local: [UInt8] = ProxyProtocol.v2Signature + [0x20, 0x00, 0x00, 0x00]

    static func start(_ flags: [String] = []) async throws -> (Executable, Int) {
        try await startServerExecutable(
            ["--proxy-protocol", "--proxy-from", "127.0.0.1", "--log-format", "json"] + flags)
    }

    /// Sends `header` and then `message`, returns the reply, and closes.
    static func exchange(port: Int, header: [UInt8], message: String, split: Bool = false) throws -> String? {
        let socket = try RawSocket.connect(port: port)
        socket.setNoDelay()
        if split {
            for byte in header { try socket.write([byte]) }  // the header in as many pieces as TCP makes of it
            try socket.write(bytes(message) + [0])
        } else {
            try socket.write(header + bytes(message) + [0])  // header and message in one segment
        }
        let reply = try socket.readReplyText()
        socket.shutdownWrite()
        _ = socket.waitForPeerClose(seconds: 5)
        return reply
    }

    @Test("v1 and v2 headers: the client they name is the peer, the balancer is `via`, the framer never sees them")
    func headers() async throws {
        let (server, port) = try await Self.start(["--log-level", "debug"])  // health checks are logged at debug
        defer { server.terminate() }
        #expect(try Self.exchange(port: port, header: Self.v1, message: "hello") == "5 : hello")
        #expect(try Self.exchange(port: port, header: Self.v2, message: "v2") == "2 : v2")
        #expect(try Self.exchange(port: port, header: Self.v2, message: "split", split: true) == "5 : split")
        #expect(try Self.exchange(port: port, header: Self.local, message: "check") == "5 : check")
        let lines = await waitForConnectionLines(server, count: 4)
        let peers = Set(lines.compactMap { $0["peer"] as? String })
        #expect(peers.contains("203.0.113.7:5555"))
        #expect(peers.contains("203.0.113.8:5556"))
        let proxied = lines.filter { ($0["peer"] as? String)?.hasPrefix("203.0.113.") == true }
        #expect(proxied.count == 3)
        #expect(proxied.allSatisfy { ($0["via"] as? String)?.hasPrefix("127.0.0.1:") == true })
        // LOCAL: the balancer's own connection, served as itself.
        let local = try #require(lines.first { ($0["peer"] as? String)?.hasPrefix("127.0.0.1:") == true })
        #expect(local["via"] == nil)
        #expect(local["level"] as? String == "debug", "a balancer's health checks are not worth an info line each")
        #expect(lines.allSatisfy { $0["end"] as? String == "client-closed" && $0["messages"] as? Int == 1 })
        // Only the messages were framed: the v2 signature's NUL made no message of its own.
        await server.wait { $0.stdout.components(separatedBy: "\n").count >= 5 }
        #expect(server.stdout == "receive: hello\nreceive: v2\nreceive: split\nreceive: check\n")
    }

    @Test("no header, an untrusted source, a malformed header, a stalled header: closed without a word, logged why")
    func refusals() async throws {
        let (server, port) = try await Self.start(["--proxy-timeout", "0.5"])
        defer { server.terminate() }
        let outcomes = try await blocking { () -> [[UInt8]] in
            var outcomes: [[UInt8]] = []
            for (source, sent) in [
                ("127.0.0.1", bytes("hello") + [0]),
                ("127.0.0.2", Self.v1 + bytes("hello") + [0]),
                ("127.0.0.1", bytes("PROXY TCP4 203.0.113.7 192.0.2.1 5555 99999\r\nhello") + [0]),
            ] {
                let socket = try RawSocket.connect(port: port, source: source)
                try socket.write(sent)
                outcomes.append(try socket.readUntilClosed())
            }
            // Half a header, then nothing: closed once the header's deadline passes.
            let staller = try RawSocket.connect(port: port)
            try staller.write("PROXY TCP4 ")
            #expect(staller.waitForPeerClose(seconds: 5), "the stalled header still holds its connection")
            return outcomes
        }
        #expect(outcomes == [[], [], []], "nothing may be echoed, not even an error line")
        // It goes on serving everyone else.
        #expect(try Self.exchange(port: port, header: Self.v1, message: "still here") == "10 : still here")
        let lines = await waitForConnectionLines(server, count: 5)
        let refused = lines.filter { $0["end"] as? String == "proxy-refused" }.compactMap { $0["detail"] as? String }
        #expect(refused.count == 4)
        #expect(refused.contains("the connection did not begin with a PROXY protocol header"))
        #expect(refused.contains("the connection came from an address not trusted to send PROXY headers"))
        #expect(refused.contains("PROXY v1 line: bad port"))
        #expect(refused.contains("no complete PROXY header within 0.5 s"))
        let untrusted = lines.first { ($0["detail"] as? String)?.contains("not trusted") == true }
        #expect((untrusted?["peer"] as? String)?.hasPrefix("127.0.0.2:") == true)
    }

    @Test("the connection cap names the client from the header")
    func busy() async throws {
        let (server, port) = try await Self.start(["--max-connections", "1"])
        defer { server.terminate() }
        let reply = try await blocking { () -> String? in
            let holder = try RawSocket.connect(port: port)
            try holder.write(Self.v2 + bytes("first") + [0])
            _ = try holder.readReplyText()
            let second = try RawSocket.connect(port: port)
            try second.write(Self.v1)
            return try second.readReplyText()
        }
        #expect(reply?.hasPrefix("error: server busy") == true)
        let lines = await waitForConnectionLines(server, count: 1)
        let busy = try #require(lines.first { $0["end"] as? String == "busy" })
        #expect(busy["peer"] as? String == "203.0.113.7:5555")
    }

    @Test("--proxy-protocol needs --proxy-from, and --proxy-from takes addresses and CIDR ranges only")
    func flags() throws {
        let missing = try run(Executable.productsDirectory + "/server", ["--proxy-protocol"])
        #expect(missing.status != 0 && missing.output.contains("--proxy-protocol needs --proxy-from"))
        let bad = try run(Executable.productsDirectory + "/server", ["--proxy-protocol", "--proxy-from", "lb.example"])
        #expect(bad.status != 0 && bad.output.contains("--proxy-from lb.example: not an address or CIDR range"))
        let alone = try run(Executable.productsDirectory + "/server", ["--proxy-from", "10.0.0.0/8"])
        #expect(alone.status != 0 && alone.output.contains("--proxy-from needs --proxy-protocol"))
    }

    @Test("library: the message callback is told the client from the header")
    func onMessagePeer() async throws {
        let seen = Mutex<[String]>([])
        let server = try await startServer {
            $0.proxyProtocol = ProxyProtocolConfiguration(
                trustedSources: [AddressRange("127.0.0.0/8")].compactMap { $0 })
            $0.onMessage = { _, peer in
                seen.withLock { $0.append(ConnectionPeer.format(peer)) }
            }
        }
        let port = server.port
        #expect(try await blocking { try Self.exchange(port: port, header: Self.v1, message: "x") } == "1 : x")
        await server.shutdown()
        let entries = seen.withLock { $0 }
        #expect(entries.count == 1)
        #expect(entries == ["203.0.113.7:5555"])
    }

    @Test("a peer that is gone before its address is read (a layer-4 check) is not called untrusted")
    func goneBeforeAccept() async throws {
        let (server, port) = try await Self.start(["--quiet"])
        defer { server.terminate() }
        try await blocking {
            for _ in 0..<30 {
                let socket = try RawSocket.connect(port: port)
                socket.resetOnClose()  // released here: a reset, as a balancer's check may do
            }
        }
        let lines = await waitForConnectionLines(server, count: 30)
        let gone = lines.filter { ($0["peer"] as? String) == "?" }
        // The reset arrives before the server's loop gets to the connection: here 29 or 30 of 30.
        #expect(!gone.isEmpty, "no connection was gone before it was accepted: the test proved nothing")
        for line in gone {
            #expect(!((line["detail"] as? String) ?? "").contains("not trusted"), "\(line)")
            #expect(line["end"] as? String == "reset", "\(line)")
        }
    }
}
