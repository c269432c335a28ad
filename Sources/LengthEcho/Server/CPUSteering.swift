import Logging
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

/// Event loops pinned to CPUs, and each new connection given to the loop on the CPU that received it
/// (`ServerConfiguration.cpuAffinity`).
///
/// The listening sockets of one address are an SO_REUSEPORT group with one socket per loop, in loop order. A
/// classic BPF program attached to the group (SO_ATTACH_REUSEPORT_CBPF) returns the index of the loop pinned
/// to the CPU the connection's first packet arrived on; for a CPU without a loop it returns an index past the
/// group, and the kernel then picks a socket by hash, as it does without a program.
enum CPUSteering {
    /// The CPUs this process may run on, ascending (`Cpus_allowed_list` in `/proc/self/status`); nil where
    /// that cannot be read.
    static func allowedCPUs() -> [Int]? {
        guard let file = fopen("/proc/self/status", "r") else { return nil }
        defer { fclose(file) }
        var line = [CChar](repeating: 0, count: 4096)
        while fgets(&line, Int32(line.count), file) != nil {
            let text = String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            guard text.hasPrefix("Cpus_allowed_list:") else { continue }
            return Self.parse(list: text.dropFirst("Cpus_allowed_list:".count))
        }
        return nil
    }

    /// The CPUs in a kernel CPU list such as `0-3,8,10-11`, ascending; nil if it is not one.
    static func parse(list: Substring) -> [Int]? {
        var cpus: [Int] = []
        for part in list.split(separator: ",") {
            let bounds = part.split(separator: "-", omittingEmptySubsequences: false).map {
                Int(String($0.filter { !$0.isWhitespace }))
            }
            switch bounds.count {
            case 1:
                guard let cpu = bounds[0], cpu >= 0 else { return nil }
                cpus.append(cpu)
            case 2:
                guard let low = bounds[0], let high = bounds[1], low >= 0, low <= high else { return nil }
                cpus.append(contentsOf: low...high)
            default:
                return nil
            }
        }
        return cpus.isEmpty ? nil : cpus.sorted()
    }

    /// The CPU each of `threads` loops is pinned to: the allowed CPUs in turn.
    static func loopCPUs(threads: Int, allowed: [Int]) -> [Int] {
        (0..<threads).map { allowed[$0 % allowed.count] }
    }

    /// One classic BPF instruction (`struct sock_filter`: 8 bytes, laid out as in C).
    struct Instruction: Equatable {
        var code: UInt16
        var jumpIfTrue: UInt8
        var jumpIfFalse: UInt8
        var k: UInt32
    }

    /// `struct sock_fprog`: the program as `setsockopt` takes it (a length, then at the next 8-byte boundary the
    /// pointer: the same layout in Swift). The kernel copies the instructions.
    private struct Program: @unchecked Sendable {
        var length: UInt16
        var instructions: UnsafeMutablePointer<Instruction>
    }

    // From <linux/filter.h> and <linux/bpf_common.h>, which Swift does not import.
    private static let loadWordAbsolute: UInt16 = 0x20  // BPF_LD | BPF_W | BPF_ABS
    private static let jumpIfEqual: UInt16 = 0x15  // BPF_JMP | BPF_JEQ | BPF_K
    private static let returnConstant: UInt16 = 0x06  // BPF_RET | BPF_K
    /// SKF_AD_OFF + SKF_AD_CPU: loading from this offset gives the number of the CPU running the program.
    private static let currentCPU = UInt32(bitPattern: -0x1000 + 36)
    /// An index past any group: the kernel falls back to its hash.
    static let noLoop = UInt32.max

    /// The program for loops pinned to `loopCPUs` (loop i on `loopCPUs[i]`): the first loop on the receiving
    /// CPU, else `noLoop`.
    static func program(loopCPUs: [Int]) -> [Instruction] {
        var firstLoop: [(cpu: Int, loop: Int)] = []
        for (loop, cpu) in loopCPUs.enumerated() where !firstLoop.contains(where: { $0.cpu == cpu }) {
            firstLoop.append((cpu, loop))
        }
        var program = [Instruction(code: Self.loadWordAbsolute, jumpIfTrue: 0, jumpIfFalse: 0, k: Self.currentCPU)]
        for (cpu, loop) in firstLoop {
            // If the CPU is this one, the next instruction (return its loop); else skip it.
            program.append(Instruction(code: Self.jumpIfEqual, jumpIfTrue: 0, jumpIfFalse: 1, k: UInt32(cpu)))
            program.append(Instruction(code: Self.returnConstant, jumpIfTrue: 0, jumpIfFalse: 0, k: UInt32(loop)))
        }
        program.append(Instruction(code: Self.returnConstant, jumpIfTrue: 0, jumpIfFalse: 0, k: Self.noLoop))
        return program
    }

    /// Attaches `program(loopCPUs:)` to the SO_REUSEPORT group of `listener` (the group's first socket).
    ///
    /// - Throws: the `setsockopt` error (a kernel before 4.5 has no SO_ATTACH_REUSEPORT_CBPF).
    static func attach(to listener: any Channel, loopCPUs: [Int]) async throws {
        guard let provider = listener as? any SocketOptionProvider else { return }
        let instructions = Self.program(loopCPUs: loopCPUs)
        let storage = UnsafeMutablePointer<Instruction>.allocate(capacity: instructions.count)
        storage.initialize(from: instructions, count: instructions.count)
        defer { storage.deallocate() }
        let program = Program(length: UInt16(instructions.count), instructions: storage)
        try await provider.unsafeSetSocketOption(
            level: .socket, name: NIOBSDSocket.Option(rawValue: SO_ATTACH_REUSEPORT_CBPF), value: program
        ).get()
    }
}

/// Under CPU affinity, how evenly new connections spread over the event loops: where one CPU receives every
/// packet, one loop takes every connection, and the operator should hear of it once.
struct LoopBalance {
    /// A verdict needs at least this many connections since the last one.
    let minimumConnections: Int
    /// The loops' accepted counts at the last verdict (none at first).
    private var last: [Int]
    /// Whether the last verdict was "unbalanced" (said once, until a balanced verdict re-arms it).
    private var unbalanced = false

    init(loops: Int, minimumConnections: Int) {
        self.last = Array(repeating: 0, count: loops)
        self.minimumConnections = minimumConnections
    }

    /// Takes every loop's count of connections accepted so far; returns a warning when one loop took 90% or more
    /// of the connections since the last verdict, unless the last verdict said so already.
    mutating func check(accepted: [Int]) -> String? {
        guard accepted.count >= 2, accepted.count == self.last.count else { return nil }
        let taken = zip(accepted, self.last).map { $0 - $1 }
        let total = taken.reduce(0, +)
        // Too few to judge yet: keep counting from the same start.
        guard total >= self.minimumConnections, total > 0 else { return nil }
        self.last = accepted
        let busiest = taken.indices.max { taken[$0] < taken[$1] } ?? 0
        let wasUnbalanced = self.unbalanced
        self.unbalanced = taken[busiest] * 10 >= total * 9
        guard self.unbalanced, !wasUnbalanced else { return nil }
        return "CPU affinity: event loop \(busiest) took \(taken[busiest] * 100 / total)% of the last \(total) "
            + "connections; one CPU may be receiving every packet (a network card with one receive queue and no RPS): spread the "
            + "receive work over the CPUs (RPS), or run without CPU affinity"
    }
}
