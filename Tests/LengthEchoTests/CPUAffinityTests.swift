import Foundation
import LengthEchoTestSupport
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
            let script =
                "for i in $(seq \(count)); do exec 3<>/dev/tcp/127.0.0.1/\(port); printf 'x\\0' >&3; "
                + "IFS= read -r -d '' reply <&3; [ \"$reply\" = '1 : x' ] || exit 1; exec 3<&-; done"
            let made = try await blocking {
                try run("/usr/bin/env", ["taskset", "-c", "\(cpu)", "bash", "-c", script])
            }
            #expect(made.status == 0, "\(made.output)")
        }
        let scraped = try await blocking { try http("/metrics", port: status).body }
        #expect(sample(scraped, "length_echo_connections_total") == 14, "\(scraped)")
        #expect(sample(scraped, "length_echo_event_loop_connections_total{loop=\"1\"}") == 10, "\(scraped)")
        #expect(sample(scraped, "length_echo_event_loop_connections_total{loop=\"0\"}") == 4, "\(scraped)")
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
