import Foundation
import LengthEchoTestSupport
import Logging
import Synchronization
import Testing

@testable import LengthEcho

/// The CPUs this test process may run on.
private let allowedCPUs = CPUSteering.allowedCPUs() ?? []

@Suite("CPU affinity: loops pinned to CPUs, each connection taken by the loop on the CPU that received it")
struct CPUAffinityTests {
    @Test(
        "each loop is pinned to its own CPU, and connections made on a CPU are taken by that CPU's loop",
        .enabled(if: allowedCPUs.count >= 2, "needs two CPUs"), .timeLimit(.minutes(1)))
    func connectionsGoToTheLoopOnTheirCPU() async throws {
        let cpus = Array(allowedCPUs.prefix(2))
        let (server, port, status) = try await startWithStatus(["--cpu-affinity", "--threads", "2"])
        defer { server.terminate() }
        #expect(server.stderr.contains("event loops pinned to CPUs \(cpus[0]), \(cpus[1]);"), "\(server.stderr)")

        // The two loop threads may each run on one CPU only, one on each.
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(server.pid)/task")) ?? []
        let loopCPUs = tasks.compactMap { task -> String? in
            let path = "/proc/\(server.pid)/task/\(task)/"
            guard let name = try? String(contentsOfFile: path + "comm", encoding: .utf8), name.hasPrefix("NIO-ELT"),
                let status = try? String(contentsOfFile: path + "status", encoding: .utf8)
            else { return nil }
            return status.split(separator: "\n").first { $0.hasPrefix("Cpus_allowed_list:") }?
                .split(separator: "\t").last.map(String.init)
        }
        #expect(loopCPUs.sorted() == cpus.map(String.init).sorted())

        // Connections from a shell pinned to each CPU in turn, each one answered before the next is made. Without
        // steering the kernel spreads them over both loops by hash.
        for (cpu, count) in [(cpus[1], 10), (cpus[0], 4)] {
            let made = try await makeConnections(count, to: port, fromCPU: cpu)
            #expect(made.status == 0, "\(made.output)")
        }
        let scraped = try await blocking { try http("/metrics", port: status).body }
        #expect(sample(scraped, "length_echo_connections_total") == 14, "\(scraped)")
        #expect(sample(scraped, "length_echo_event_loop_connections_total{loop=\"1\"}") == 10, "\(scraped)")
        #expect(sample(scraped, "length_echo_event_loop_connections_total{loop=\"0\"}") == 4, "\(scraped)")
    }

    @Test(
        "a loop that takes nearly every connection is warned about once, from the server's own check",
        .enabled(if: allowedCPUs.count >= 2, "needs two CPUs"), .timeLimit(.minutes(1)))
    func oneLoopTakingEverythingIsWarnedAbout() async throws {
        let warnings = WarningLines()
        let server = try await startServer { configuration in
            configuration.cpuAffinity = true
            configuration.loopBalanceInterval = .milliseconds(50)
            configuration.loopBalanceMinimum = 20
            configuration.logger = Logger(label: "test-server") { _ in warnings }
        }
        // As from a network card whose one receive queue is served by one CPU: every connection from that CPU.
        let made = try await makeConnections(30, to: server.port, fromCPU: allowedCPUs[0])
        #expect(made.status == 0, "\(made.output)")
        let warning = await warnings.first(within: 10) { $0.contains("took") }
        await server.shutdown()
        // The server judges every 50 ms, so the verdict may come before all 30 connections are made.
        #expect(warning?.hasPrefix("CPU affinity: event loop 0 took 100% of the last ") == true, "\(warning ?? "none")")
        #expect(warnings.count { $0.contains("took") } == 1, "said once")
    }

    @Test("the balance verdict: 90% or more on one loop is said once, until a balanced verdict; too few waits")
    func balanceVerdicts() {
        var balance = LoopBalance(loops: 2, minimumConnections: 100)
        #expect(balance.check(accepted: [60, 0]) == nil, "60 connections are too few to judge")
        let warning = balance.check(accepted: [120, 0])
        #expect(warning?.hasPrefix("CPU affinity: event loop 0 took 100% of the last 120 connections;") == true)
        #expect(balance.check(accepted: [300, 10]) == nil, "still unbalanced: said already")
        #expect(balance.check(accepted: [360, 60]) == nil, "balanced again (60 and 50)")
        #expect(balance.check(accepted: [370, 160])?.contains("event loop 1 took 90% of the last 110") == true)
        var one = LoopBalance(loops: 1, minimumConnections: 1)
        #expect(one.check(accepted: [500]) == nil, "one loop has nothing to compare with")
    }

    @Test("a kernel CPU list is read as the CPUs it names; anything else is not one")
    func cpuLists() {
        #expect(CPUSteering.parse(list: "0-3,8,10-11\n") == [0, 1, 2, 3, 8, 10, 11])
        #expect(CPUSteering.parse(list: "\t5") == [5])
        for bad in ["", "a", "3-1", "1-2-3", "-1", "0,,x"] {
            #expect(CPUSteering.parse(list: Substring(bad)) == nil, "\(bad)")
        }
    }

    @Test("loops take the allowed CPUs in turn; the program returns the first loop on a CPU, else no loop")
    func program() {
        #expect(CPUSteering.loopCPUs(threads: 3, allowed: [2, 5]) == [2, 5, 2])
        let program = CPUSteering.program(loopCPUs: [2, 5, 2])
        typealias I = CPUSteering.Instruction
        #expect(
            program == [
                I(code: 0x20, jumpIfTrue: 0, jumpIfFalse: 0, k: UInt32(bitPattern: -0x1000 + 36)),
                I(code: 0x15, jumpIfTrue: 0, jumpIfFalse: 1, k: 2), I(code: 0x06, jumpIfTrue: 0, jumpIfFalse: 0, k: 0),
                I(code: 0x15, jumpIfTrue: 0, jumpIfFalse: 1, k: 5), I(code: 0x06, jumpIfTrue: 0, jumpIfFalse: 0, k: 1),
                I(code: 0x06, jumpIfTrue: 0, jumpIfFalse: 0, k: CPUSteering.noLoop),
            ])
    }
}

/// `count` connections to 127.0.0.1:`port`, one after another, from a shell pinned to `cpu` (so the kernel receives
/// each on that CPU): each sends `x` and reads its reply (the shell exits 1 on a wrong one) before the next.
private func makeConnections(
    _ count: Int, to port: Int, fromCPU cpu: Int
) async throws -> (status: Int32, output: String) {
    let script =
        "for i in $(seq \(count)); do exec 3<>/dev/tcp/127.0.0.1/\(port); printf 'x\\0' >&3; "
        + "IFS= read -r -d '' reply <&3; [ \"$reply\" = '1 : x' ] || exit 1; exec 3<&-; done"
    return try await blocking { try run("/usr/bin/env", ["taskset", "-c", "\(cpu)", "bash", "-c", script]) }
}

/// A log handler that keeps the warnings and lets a test wait, for a bounded time, for one.
private final class WarningLines: LogHandler, @unchecked Sendable {
    private let seen = Mutex<[String]>([])
    private let stream: AsyncStream<String>
    private let continuation: AsyncStream<String>.Continuation
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .warning

    init() {
        (self.stream, self.continuation) = AsyncStream.makeStream()
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { self.metadata[key] }
        set { self.metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        guard event.level >= .warning else { return }
        self.seen.withLock { $0.append("\(event.message)") }
        self.continuation.yield("\(event.message)")
    }

    /// How many warnings so far satisfy `matching`.
    func count(_ matching: (String) -> Bool) -> Int {
        self.seen.withLock { $0.filter(matching).count }
    }

    /// The first warning that satisfies `matching`, or nil if none comes within `seconds`. (One caller at a time.)
    func first(within seconds: Int, _ matching: @escaping @Sendable (String) -> Bool) async -> String? {
        await withTaskGroup(of: String?.self) { group in
            group.addTask {
                for await line in self.stream where matching(line) { return line }
                return nil
            }
            group.addTask {
                try? await Task.sleep(for: .seconds(seconds))
                return nil
            }
            let first = await group.next() ?? nil
            group.cancelAll()
            return first
        }
    }
}
