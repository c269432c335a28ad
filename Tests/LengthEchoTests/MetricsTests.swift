import Foundation
import LengthEcho
import LengthEchoCore
import LengthEchoTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// What `/metrics` says, against what the connection lines say.
@Suite("Metrics: exact under concurrent scrapes, every series from the start, described", .timeLimit(.minutes(2)))
struct MetricsTests {
    @Test(
        "with 2 and with 6 scrapers polling during a load, every counter equals what the connection lines add up to",
        arguments: [2, 6])
    func concurrentScrapes(scrapers: Int) async throws {
        let (server, port, status) = try await startWithStatus(["--log-format", "json"])
        defer { server.terminate() }
        let (connections, messagesEach) = (4 * 40, 25)
        let done = Counter()
        let highest = try await withThrowingTaskGroup(of: Double.self) { group in
            for _ in 0..<4 {
                group.addTask {
                    try await blocking {
                        defer { done.add() }
                        for _ in 0..<connections / 4 {
                            let socket = try RawSocket.connect(port: port)
                            for index in 0..<messagesEach {
                                try socket.write(bytes("m\(index)") + [0])
                                _ = try socket.readReply()
                            }
                        }
                        return 0
                    }
                }
            }
            for _ in 0..<scrapers {
                group.addTask {
                    try await blocking {
                        // Polls until the load is done (bounded), keeping the highest count any scrape said.
                        var highest = 0.0
                        for _ in 0..<5000 where done.value < 4 {
                            let body = try http("/metrics", port: status).body
                            highest = max(highest, sample(body, "length_echo_messages_total") ?? 0)
                        }
                        return highest
                    }
                }
            }
            return try await group.reduce(0, max)
        }
        let lines = await waitForConnectionLines(server, count: connections)
        let total = { (key: String) in lines.reduce(0) { $0 + ($1[key] as? Int ?? 0) } }
        let scraped = try await blocking { try http("/metrics", port: status).body }
        #expect(total("messages") == connections * messagesEach)
        #expect(sample(scraped, "length_echo_messages_total") == Double(total("messages")), "\(scraped)")
        #expect(highest <= Double(total("messages")), "a scrape during the load said more than was ever answered")
        #expect(sample(scraped, "length_echo_connections_total") == Double(lines.count))
        #expect(sample(scraped, "length_echo_bytes_total{direction=\"in\"}") == Double(total("bytes_in")))
        #expect(sample(scraped, "length_echo_bytes_total{direction=\"out\"}") == Double(total("bytes_out")))
    }

    @Test("every series is there at 0 before its first event, and every family has # HELP")
    func fromTheStart() async throws {
        let certificates = try await TestCertificates.main.value
        let (server, _, status) = try await startWithStatus([
            "--tls", "--cert", certificates.serverCertificate, "--key", certificates.serverKey,
        ])
        defer { server.terminate() }
        let scraped = try await blocking { try http("/metrics", port: status).body }
        for series in [
            "length_echo_messages_total", "length_echo_connections_total", "length_echo_bytes_total{direction=\"in\"}",
            "length_echo_errors_total{kind=\"too_large\"}", "length_echo_errors_total{kind=\"reset\"}",
            "length_echo_connections_refused_total{reason=\"busy\"}",
            "length_echo_connections_refused_total{reason=\"tls\"}", "length_echo_reloads_total{result=\"failure\"}",
        ] {
            #expect(sample(scraped, series) == 0, "\(series): \(scraped)")
        }
        #expect(
            scraped.contains(
                "length_echo_tls_handshakes_total{result=\"ok\",version=\"TLSv1.3\",resumed=\"false\"} 0")
                || scraped.contains("version=\"TLSv1.3\""), "\(scraped)")
        let families = scraped.split(separator: "\n").filter { $0.hasPrefix("# TYPE ") }.map {
            $0.split(separator: " ")[2]
        }
        #expect(families.count >= 10)
        for family in families {
            #expect(scraped.contains("# HELP \(family) "), "no HELP for \(family)")
        }
    }
}

/// A count shared by test threads.
final class Counter: @unchecked Sendable {
    private let lock = NSLock()
    private var count = 0
    func add() { self.lock.withLock { self.count += 1 } }
    var value: Int { self.lock.withLock { self.count } }
}
