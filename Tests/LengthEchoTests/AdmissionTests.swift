import Foundation
import LengthEcho
import LengthEchoCore
import LengthEchoTestSupport
import NIOCore
import Testing

@testable import LengthEcho

/// Admission, before any TLS work: who may connect by address, how many at once from one address, how many TLS
/// handshakes a second.
@Suite("Admission by address", .timeLimit(.minutes(1)))
struct AdmissionTests {
    @Test("--allow-from and --deny-from: a refused address is closed without a word and logged; others are served")
    func allowAndDeny() async throws {
        let (server, port) = try await startServerExecutable([
            "--log-format", "json", "--quiet", "--allow-from", "127.0.0.0/30", "--deny-from", "127.0.0.3",
        ])
        defer { server.terminate() }
        let outcomes = try await blocking { () -> [String] in
            try ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.5"].map { source in
                let socket = try RawSocket.connect(port: port, source: source)
                try socket.write(bytes("who") + [0])
                socket.shutdownWrite()  // the last message: a served connection closes after its reply
                return String(decoding: try socket.readUntilClosed(), as: UTF8.self)
            }
        }
        #expect(outcomes == ["3 : who\0", "3 : who\0", "", ""])
        let lines = await waitForConnectionLines(server, count: 4)
        let denied = lines.filter { $0["end"] as? String == "denied" }
        #expect(
            Set(denied.compactMap { ($0["peer"] as? String)?.split(separator: ":").first }) == [
                "127.0.0.3", "127.0.0.5",
            ])
        #expect(denied.contains { $0["detail"] as? String == "the address is in a denied range (127.0.0.3/32)" })
        #expect(denied.contains { $0["detail"] as? String == "the address is in no allowed range" })
    }

    @Test("behind a balancer the policy applies to the client the PROXY header names")
    func afterProxy() async throws {
        let (server, port) = try await startServerExecutable([
            "--log-format", "json", "--quiet", "--proxy-protocol", "--proxy-from", "127.0.0.1", "--deny-from",
            "203.0.113.0/24",
        ])
        defer { server.terminate() }
        let outcomes = try await blocking { () -> [String] in
            try ["203.0.113.7", "198.51.100.9"].map { client in
                let socket = try RawSocket.connect(port: port)
                try socket.write(bytes("PROXY TCP4 \(client) 192.0.2.1 5555 4000\r\nwho") + [0])
                socket.shutdownWrite()
                return String(decoding: try socket.readUntilClosed(), as: UTF8.self)
            }
        }
        #expect(outcomes == ["", "3 : who\0"])
        let lines = await waitForConnectionLines(server, count: 2)
        #expect(lines.contains { $0["peer"] as? String == "203.0.113.7:5555" && $0["end"] as? String == "denied" })
    }

    @Test("--max-connections-per-ip: one address over it is told `server busy`, another is served, a slot frees")
    func perAddress() async throws {
        let (server, port) = try await startServerExecutable(["--quiet", "--max-connections-per-ip", "2"])
        defer { server.terminate() }
        try await blocking {
            let held = try (0..<2).map { _ in
                let socket = try RawSocket.connect(port: port, source: "127.0.0.2")
                try socket.write(bytes("hold") + [0])
                _ = try socket.readReply()
                return socket
            }
            let third = try RawSocket.connect(port: port, source: "127.0.0.2")
            #expect(
                try third.readReplyText()
                    == "error: server busy: 2 connections from your address are open, the limit; try again later")
            let other = try RawSocket.connect(port: port, source: "127.0.0.3")
            try other.write(bytes("other") + [0])
            #expect(try other.readReplyText() == "5 : other")
            held[0].shutdownWrite()
            #expect(held[0].waitForPeerClose(seconds: 5))
            // The slot is free again (the server may take a moment to notice the close: retried, bounded).
            var reply: String?
            for _ in 0..<50 where reply?.hasPrefix("5 : again") != true {
                let again = try RawSocket.connect(port: port, source: "127.0.0.2")
                try again.write(bytes("again") + [0])
                reply = try again.readReplyText()
            }
            #expect(reply == "5 : again")
        }
    }

    @Test("the handshake token bucket: N at once, then one per 1/N s; a refusal logged at most once a second")
    func tokenBucket() throws {
        let limits = AddressLimits(maximumOpen: nil, handshakesPerSecond: 5)
        let key = try #require(AddressKey(try SocketAddress(ipAddress: "192.0.2.1", port: 1)))
        let other = try #require(AddressKey(try SocketAddress(ipAddress: "192.0.2.2", port: 1)))
        let start = NIODeadline.uptimeNanoseconds(1_000_000_000)
        for _ in 0..<5 { #expect(limits.takeHandshake(key, now: start).allowed) }
        #expect(limits.takeHandshake(key, now: start) == (false, true))
        #expect(limits.takeHandshake(key, now: start + .milliseconds(100)) == (false, false))
        #expect(limits.takeHandshake(other, now: start).allowed, "another address has its own bucket")
        #expect(limits.takeHandshake(key, now: start + .milliseconds(200)).allowed, "a token every 200 ms")
        #expect(limits.takeHandshake(key, now: start + .milliseconds(210)) == (false, false))
        // 890 ms later, 4.45 tokens more (0.05 were left): four handshakes, then a refusal, logged again (1.1 s on).
        for _ in 0..<4 { #expect(limits.takeHandshake(key, now: start + .milliseconds(1100)).allowed) }
        #expect(limits.takeHandshake(key, now: start + .milliseconds(1100)) == (false, true), "logged again after 1 s")
        let mapped = try #require(AddressKey(try SocketAddress(ipAddress: "::ffff:192.0.2.1", port: 9)))
        #expect(mapped == key, "an IPv4-mapped IPv6 address is the IPv4 address")
    }

    @Test("the handshake buckets stay bounded when many addresses come and go, none of them refused")
    func bucketsBounded() throws {
        let limits = AddressLimits(maximumOpen: nil, handshakesPerSecond: 5)
        let start = NIODeadline.uptimeNanoseconds(1_000_000_000)
        // 100,000 addresses, one handshake each, 1 ms apart: each bucket is full again 200 ms later.
        for index in 0..<100_000 {
            let address = "10.\(index >> 16 & 255).\(index >> 8 & 255).\(index & 255)"
            let key = try #require(AddressKey(try SocketAddress(ipAddress: address, port: 1)))
            #expect(limits.takeHandshake(key, now: start + .milliseconds(Int64(index))).allowed)
        }
        #expect(limits.count <= 16 * 4096, "\(limits.count) addresses remembered")
    }

    @Test("a handshake flood from one address is cut before any TLS work; another address is served meanwhile")
    func handshakeFlood() async throws {
        let certificates = try await TestCertificates.main.value
        let (server, port) = try await startServerExecutable([
            "--tls", "--cert", certificates.serverCertificate, "--key", certificates.serverKey, "--quiet",
            "--log-format", "json", "--handshake-rate", "20",
        ])
        defer { server.terminate() }
        // The flood runs until the server has cut it (however slowly this machine runs it), and on while another
        // address connects; then it is stopped (bench reports at SIGINT).
        let floodStarted = Date()
        let flood = try Executable(
            "bench",
            [
                "--port", "\(port)", "--tls", "--ca", certificates.ca, "--server-name", "localhost", "--source",
                "127.0.0.2", "--mode", "per-request", "--no-resume", "-c", "4", "--threads", "1", "--duration", "60",
                "--warmup", "0", "--json",
            ])
        defer { flood.terminate(signal: SIGKILL) }
        await server.wait(seconds: 30) {
            $0.stderr.contains("refusing TLS handshakes from this address") || !$0.isRunning
        }
        // Meanwhile, from another address: every handshake is served.
        var served = 0
        for _ in 0..<10 {
            var configuration = ClientConfiguration(host: "127.0.0.1", port: port)
            configuration.tls = try certificates.clientContext()
            configuration.serverName = "localhost"
            let client = LengthEchoClient(configuration: configuration)
            if (try? await client.send(bytes("calm")))?.text == "4 : calm" { served += 1 }
            await client.close()
        }
        #expect(served == 10)
        flood.terminate(signal: SIGINT)
        #expect(await flood.exitStatus() == 0)
        let seconds = Date().timeIntervalSince(floodStarted)
        let refusedLog = server.stderr.components(separatedBy: "refusing TLS handshakes from this address").count - 1
        #expect(
            refusedLog >= 1 && Double(refusedLog) <= seconds + 1,
            "at most once a second for the one address: \(refusedLog) in \(seconds) s")
        let lines = connectionLines(server)
        let cut = lines.filter { $0["end"] as? String == "handshake-rate" }
        #expect(!cut.isEmpty)
        #expect(cut.allSatisfy { ($0["peer"] as? String)?.hasPrefix("127.0.0.2:") == true })
        #expect(
            lines.filter { ($0["peer"] as? String)?.hasPrefix("127.0.0.1:") == true }.allSatisfy {
                $0["end"] as? String == "client-closed"
            })
    }
}
