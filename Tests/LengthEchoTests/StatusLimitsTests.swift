import Foundation
import LengthEchoCore
import LengthEchoTestSupport
import NIOCore
import Testing

@testable import LengthEcho

#if canImport(Glibc)
import Glibc
#endif

/// The status port's own limits: the rules at explicit instants, then the port over real sockets.
@Suite("The status port's limits: connections, head size, deadlines", .timeLimit(.minutes(1)))
struct StatusLimitsTests {
    private let start = NIODeadline.uptimeNanoseconds(1_000_000_000_000)

    private func at(_ seconds: Double) -> NIODeadline {
        self.start + .nanoseconds(Int64(seconds * 1e9))
    }

    private func feed(
        _ rules: inout StatusConnectionRules, _ text: String, at seconds: Double
    )
        -> StatusConnectionRules.Action
    {
        Array(text.utf8).withUnsafeBytes { rules.received($0, now: self.at(seconds)) }
    }

    @Test("a head must end within the head timeout of its first byte, however steadily its lines trickle")
    func headDeadline() {
        var rules = StatusConnectionRules(limits: StatusLimits(), now: self.at(0))
        #expect(self.feed(&rules, "GET /metrics HTTP/1.1\r\n", at: 20) == .none)
        for second in 21..<25 {
            #expect(self.feed(&rules, "a: b\r\n", at: Double(second)) == .none)
            #expect(rules.check(now: self.at(Double(second))) == .none)
        }
        #expect(rules.check(now: self.at(25)) == .refuse(.headTimeout), "5 s after its first byte")
        #expect(rules.check(now: self.at(26)) == .none, "refused once")
    }

    @Test("idle: 30 s from the last answer, not renewed by bytes; a head that ended waits on its answer instead")
    func idleAndAnswerDeadlines() {
        var rules = StatusConnectionRules(limits: StatusLimits(), now: self.at(0))
        #expect(rules.check(now: self.at(29.9)) == .none)
        #expect(rules.check(now: self.at(30)) == .close)
        rules = StatusConnectionRules(limits: StatusLimits(), now: self.at(0))
        #expect(self.feed(&rules, "\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", at: 1) == .none)
        #expect(rules.check(now: self.at(10.9)) == .none, "the answer has 10 s")
        #expect(rules.check(now: self.at(11)) == .close, "a peer that does not take its answer")
        rules = StatusConnectionRules(limits: StatusLimits(), now: self.at(0))
        #expect(self.feed(&rules, "GET /healthz HTTP/1.1\r\n\r\nGET /readyz HTTP/1.1\n\n", at: 1) == .none)
        rules.answered(now: self.at(2))
        #expect(rules.check(now: self.at(11.9)) == .none, "the second answer has 10 s from the first")
        rules.answered(now: self.at(3))
        #expect(rules.check(now: self.at(32.9)) == .none)
        #expect(rules.check(now: self.at(33)) == .close, "idle 30 s after the last answer")
    }

    @Test("a head over 8 KiB, or with over 100 fields, is refused before the parser holds it")
    func headLimits() {
        var rules = StatusConnectionRules(limits: StatusLimits(), now: self.at(0))
        let hundred = String(repeating: "a:\r\n", count: 100)
        #expect(self.feed(&rules, "GET / HTTP/1.1\r\n" + hundred + "\r\n", at: 0) == .none, "100 fields are fine")
        rules.answered(now: self.at(0))
        #expect(self.feed(&rules, "GET / HTTP/1.1\r\n" + hundred + "a:\r\n", at: 0) == .refuse(.tooManyFields))
        rules = StatusConnectionRules(limits: StatusLimits(), now: self.at(0))
        let long = "GET / HTTP/1.1\r\nx: " + String(repeating: "y", count: 8 * 1024)
        #expect(self.feed(&rules, long, at: 0) == .refuse(.headTooLarge))
    }

    @Test("a request target in absolute form is the same path (RFC 9112 3.2.2)")
    func absoluteForm() {
        #expect(StatusRoutes.path(of: "/metrics?x=1") == "/metrics")
        #expect(StatusRoutes.path(of: "http://localhost:9100/metrics") == "/metrics")
        #expect(StatusRoutes.path(of: "HTTP://h/readyz?y") == "/readyz")
        #expect(StatusRoutes.path(of: "http://h") == "/")
        #expect(StatusRoutes.path(of: "http://h?q") == "/")
    }

    @Test("over real sockets: 64 connections at most, the 65th gets 503 at once; limits and deadlines answered")
    func overSockets() async throws {
        let server = try await startServer()
        var limits = StatusLimits()
        limits.headTimeout = .milliseconds(300)
        let status = try await StatusServer.start(for: server, host: "127.0.0.1", port: 0, limits: limits) {
            Array("metrics\n".utf8)
        }
        let port = try #require(status.localAddress?.port)
        /// `/healthz` on new connections until one is answered 200 (a slot is back once the server has seen a
        /// close), a bounded number of times; the last status.
        @Sendable func healthyAgain() -> Int {
            var code = -1
            for _ in 0..<200 where code != 200 { code = (try? http("/healthz", port: port).status) ?? -1 }
            return code
        }
        let (over, afterwards) = try await blocking { () -> (String, Int) in
            var held = try (0..<64).map { _ in try RawSocket.connect(port: port) }
            // Each held connection is open at the server: it answers on it.
            try held[63].write("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            _ = try held[63].readOnce()
            let over = String(decoding: try RawSocket.connect(port: port).readUntilClosed(), as: UTF8.self)
            held.removeFirst()  // closed: its slot comes back
            let afterwards = healthyAgain()
            held = []
            return (over, afterwards)
        }
        #expect(over.hasPrefix("HTTP/1.1 503"), "\(over)")
        #expect(afterwards == 200)
        #expect(try await blocking { healthyAgain() } == 200)
        let answers = try await blocking { () -> [String] in
            let fields = "GET /healthz HTTP/1.1\r\n" + String(repeating: "a:\r\n", count: 101) + "\r\n"
            let slow = try RawSocket.connect(port: port)
            try slow.write("GET /healthz HTTP/1.1\r\n")  // and nothing more: the head times out
            return try [fields, nil].map { raw in
                let socket =
                    try raw.map { raw in
                        let socket = try RawSocket.connect(port: port)
                        try socket.write(raw)
                        return socket
                    } ?? slow
                return String(decoding: try socket.readUntilClosed(), as: UTF8.self)
            }
        }
        #expect(answers[0].hasPrefix("HTTP/1.1 431"), "\(answers[0])")
        #expect(answers[1].hasPrefix("HTTP/1.1 408"), "\(answers[1])")
        let keepAlive = try await blocking { () -> String in
            let socket = try RawSocket.connect(port: port)
            try socket.write("GET http://localhost/healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            return String(decoding: try socket.readOnce(), as: UTF8.self)
        }
        #expect(keepAlive.hasPrefix("HTTP/1.0 200"), "absolute form: \(keepAlive)")
        #expect(keepAlive.lowercased().contains("connection: keep-alive"), "\(keepAlive)")
        await server.shutdown()
    }
}
