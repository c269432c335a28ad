import ArgumentParser
import Foundation
import Histogram
import LengthEcho
import LengthEchoCore
import LengthEchoTLS
import NIOCore
import NIOPosix

@main
struct BenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "A load generator for length-echo servers: drives C connections and checks every reply.",
        discussion: """
            Modes: `per-request` (connect, [handshake], send, reply, close, as the original client does) and \
            `persistent` (the next message goes as soon as the reply arrives). `--hold N` instead opens N idle \
            connections and keeps them open until stdin closes (for memory measurements).
            """,
        version: LengthEchoRelease.version
    )

    @Option(name: .long, help: "The server's address.")
    var host = "127.0.0.1"

    @Option(name: .long, help: "The server's port.")
    var port = 4000

    @Option(name: [.customShort("c"), .long], help: "Concurrent connections.")
    var connections = 50

    @Option(
        name: [.customShort("d"), .long],
        help: "Seconds to measure (SIGINT or SIGTERM ends a run early, and it reports what it measured).")
    var duration: Double = 5

    @Option(name: .long, help: "Seconds of load before measuring.")
    var warmup: Double = 1

    @Option(name: [.customShort("n"), .long], help: "Stop after this many requests instead of after --duration.")
    var requests: Int?

    @Option(name: .long, help: "per-request or persistent.")
    var mode: String = "persistent"

    @Option(name: .long, help: "Message size in bytes.")
    var size = 11

    @Option(name: .long, help: "What ends each message and reply: nul or line.")
    var framing: Framing = .nul

    @Option(name: .long, help: "Event-loop threads.")
    var threads = 2

    @Flag(name: .long, help: "Speak TLS.")
    var tls = false

    @Option(name: .long, help: "With --tls: the CA to trust.")
    var ca: String?

    @Option(name: .customLong("server-name"), help: "With --tls: the name to verify. (default: --host)")
    var serverName: String?

    @Option(name: .customLong("tls-max"), help: "With --tls: 1.2 or 1.3.")
    var tlsMax: String = "1.3"

    @Flag(name: .customLong("resume"), inversion: .prefixedNo, help: "With --tls: resume sessions on new connections.")
    var resume = false

    @Option(name: .customLong("reply-timeout"), help: "Seconds to wait for a reply.")
    var replyTimeout: Double = 10

    @Option(
        name: .long,
        help:
            "Milliseconds each connection waits after a reply before its next request: a paced load (default: 0, as fast as it can)."
    )
    var pause: Double = 0

    @Option(name: .long, help: "Open this many connections, keep them idle until stdin closes, then exit.")
    var hold: Int?

    @Option(
        name: .long,
        help: "A local address to connect from (127.0.0.2: another client address on loopback); repeat for several.")
    var source: [String] = []

    @Flag(name: .long, help: "Print the result as JSON.")
    var json = false

    func validate() throws {
        guard self.connections > 0, self.threads > 0, self.size >= 0, self.duration > 0 else {
            throw ValidationError("--connections, --threads and --duration must be positive")
        }
        guard ["per-request", "persistent"].contains(self.mode) else {
            throw ValidationError("--mode is per-request or persistent")
        }
        guard self.pause >= 0, self.pause <= 60_000 else {
            throw ValidationError("--pause is milliseconds from 0 to 60000")
        }
    }

    func run() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: self.threads)
        let address = try SocketAddress.makeAddressResolvingHost(self.host, port: self.port)
        let sources = try self.source.map { try SocketAddress(ipAddress: $0, port: 0) }
        var tlsContext: TLSContext?
        if self.tls {
            tlsContext = try TLSContext.client(
                trustRoots: self.ca.map(TrustRoots.file) ?? .system,
                maximumVersion: self.tlsMax == "1.2" ? .tls12 : .tls13
            )
        }
        if let hold = self.hold {
            try await Hold.run(
                count: hold, address: address, sources: sources, tls: tlsContext,
                serverName: self.serverName ?? self.host, group: group)
            try await group.shutdownGracefully()
            return
        }

        let body = (0..<self.size).map { UInt8(0x61 + $0 % 26) }
        var expectedBuffer = ByteBuffer()
        Reply.write(echoOf: ByteBuffer(bytes: body), framing: self.framing, into: &expectedBuffer)
        var message = ByteBuffer()
        self.framing.writeRequest(body, into: &message)

        let start = NIODeadline.now()
        let measureFrom = start + .fromSeconds(self.warmup)
        let stopAt = self.requests == nil ? measureFrom + .fromSeconds(self.duration) : .distantFuture
        let plan = LoadPlan(
            address: address,
            sources: sources,
            serverName: self.serverName ?? self.host,
            mode: self.mode == "persistent" ? .persistent : .perRequest,
            message: message,
            expected: Array(expectedBuffer.readableBytesView),
            tls: tlsContext,
            resume: self.resume,
            replyTimeout: .fromSeconds(self.replyTimeout),
            pause: .fromSeconds(self.pause / 1000),
            measureFrom: self.requests == nil ? measureFrom : start,
            stopAt: stopAt
        )

        StopRequest.trap()
        let cpuBefore = CPUTime.now()
        let loops = Array(group.makeIterator())
        var progresses: [Progress] = []
        var futures: [EventLoopFuture<WorkerStats>] = []
        for (index, loop) in loops.enumerated() {
            let count = self.connections / loops.count + (index < self.connections % loops.count ? 1 : 0)
            let share = self.requests.map { $0 / loops.count + (index < $0 % loops.count ? 1 : 0) }
            let progress = Progress()
            progresses.append(progress)
            let loopFutures = try await loop.submit {
                let shared = Worker.Shared(remaining: share)
                return (0..<count).map { slot -> EventLoopFuture<WorkerStats> in
                    let worker = Worker(
                        plan: plan, loop: loop, progress: progress, shared: shared, index: slot * loops.count + index)
                    worker.start()
                    return worker.result
                }
            }.get()
            futures += loopFutures
        }

        let reporter = Task {
            guard isatty(2) == 1 else { return }
            var last = 0
            while !Task.isCancelled {
                try await Task.sleep(for: .seconds(1))
                let total = progresses.reduce(0) { $0 + $1.requests.load(ordering: .relaxed) }
                let errors = progresses.reduce(0) { $0 + $1.errors.load(ordering: .relaxed) }
                let elapsed = (NIODeadline.now() - start).seconds
                let left =
                    self.requests.map { "\(max($0 - total, 0)) requests left" }
                    ?? "\(Int(max((stopAt - NIODeadline.now()).seconds, 0).rounded(.up))) s left"
                FileHandle.standardError.write(
                    Data(
                        "\r\(Int(elapsed)) s: \(total - last) requests/s, \(errors) errors so far, \(left)   ".utf8))
                last = total
            }
        }
        var stats = WorkerStats()
        for future in futures { stats.merge(try await future.get()) }
        reporter.cancel()
        let end = NIODeadline.now()
        let cpu = CPUTime.now() - cpuBefore
        try await group.shutdownGracefully()
        if isatty(2) == 1 { FileHandle.standardError.write(Data("\r\u{1B}[K".utf8)) }

        let measuredEnd = self.requests == nil ? min(end, stopAt) : end
        let seconds = (measuredEnd - plan.measureFrom).seconds
        let report = Report(
            command: self, stats: stats, seconds: seconds, cpuSeconds: cpu, wallSeconds: (end - start).seconds)
        print(self.json ? report.json : report.text)
        if stats.requests == 0 {
            // A run that measured nothing is no measurement: say why, and fail.
            let why = ErrorKind.allCases.compactMap { kind in stats.firstErrors[kind].map { "\(kind.rawValue): \($0)" }
            }
            FileHandle.standardError.write(
                Data(
                    "bench: no request succeeded\(why.isEmpty ? "" : "; the first error: \(why[0])")\n".utf8))
            throw ExitCode.failure
        }
    }
}

struct Report {
    let command: BenchCommand
    let stats: WorkerStats
    let seconds: Double
    let cpuSeconds: Double
    let wallSeconds: Double

    var rate: Double { Double(self.stats.requests) / self.seconds }

    func percentile(_ p: Double) -> UInt64 { self.stats.requests == 0 ? 0 : self.stats.latency.valueAtPercentile(p) }

    var text: String {
        let c = self.command
        var lines: [String] = []
        lines.append(
            "bench: \(c.tls ? "TLS \(c.tlsMax)\(c.resume ? " with resumption" : "")" : "plaintext"), \(c.mode), c=\(c.connections), "
                + "\(c.size)-byte messages, \(String(format: "%.1f", self.seconds)) s measured, \(c.threads) threads"
        )
        lines.append(String(format: "requests/s    %.0f  (%d requests)", self.rate, self.stats.requests))
        lines.append(
            String(format: "MB/s          %.2f  (messages and replies)", Double(self.stats.bytes) / self.seconds / 1e6))
        if c.tls {
            lines.append(
                String(
                    format: "handshakes/s  %.0f  (%d resumed of %d)", Double(self.stats.handshakes) / self.seconds,
                    self.stats.resumed, self.stats.handshakes))
        }
        lines.append(
            "latency µs    p50 \(self.percentile(50))  p90 \(self.percentile(90))  p99 \(self.percentile(99))  "
                + "p99.9 \(self.percentile(99.9))  max \(self.stats.requests == 0 ? 0 : self.stats.latency.max)"
        )
        let errors = ErrorKind.allCases.compactMap { kind in self.stats.errors[kind].map { "\(kind.rawValue): \($0)" } }
        lines.append("errors        \(errors.isEmpty ? "none" : errors.joined(separator: ", "))")
        if self.stats.reconnects + self.stats.resends > 0 {
            lines.append(
                "reconnects    \(self.stats.reconnects)  (the server closed between messages)\n"
                    + "resends       \(self.stats.resends)  (the server closed before a reply began; sent again)")
        }
        lines.append(
            String(
                format: "bench CPU     %.2f s over %.1f s wall (%.0f%% of one core), %.1f µs per request",
                self.cpuSeconds, self.wallSeconds, 100 * self.cpuSeconds / self.wallSeconds,
                self.stats.requests == 0 ? 0 : 1e6 * self.cpuSeconds / Double(self.stats.requests)
            )
        )
        return lines.joined(separator: "\n")
    }

    var json: String {
        let c = self.command
        var errors: [String: Int] = [:]
        for (kind, count) in self.stats.errors { errors[kind.rawValue] = count }
        let object: [String: Any] = [
            "mode": c.mode, "tls": c.tls, "resume": c.resume, "connections": c.connections, "size": c.size,
            "seconds": self.seconds, "requests": self.stats.requests, "requests_per_second": self.rate,
            "megabytes_per_second": Double(self.stats.bytes) / self.seconds / 1e6,
            "handshakes": self.stats.handshakes, "resumed": self.stats.resumed,
            "handshakes_per_second": Double(self.stats.handshakes) / self.seconds,
            "latency_us": [
                "p50": self.percentile(50), "p90": self.percentile(90), "p99": self.percentile(99),
                "p99.9": self.percentile(99.9), "max": self.stats.requests == 0 ? 0 : self.stats.latency.max,
            ],
            "reconnects": self.stats.reconnects, "resends": self.stats.resends,
            "errors": errors, "bench_cpu_seconds": self.cpuSeconds, "wall_seconds": self.wallSeconds,
        ]
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data()
        return String(decoding: data, as: UTF8.self)
    }
}

/// This process's user+system CPU time in seconds.
enum CPUTime {
    static func now() -> Double {
        var usage = rusage()
        getrusage(Int32(RUSAGE_SELF.rawValue), &usage)
        return Double(usage.ru_utime.tv_sec) + Double(usage.ru_utime.tv_usec) / 1e6
            + Double(usage.ru_stime.tv_sec) + Double(usage.ru_stime.tv_usec) / 1e6
    }
}

/// `--hold N`: N idle connections (TLS handshakes done), held until stdin closes.
enum Hold {
    static func run(
        count: Int, address: SocketAddress, sources: [SocketAddress], tls: TLSContext?, serverName: String,
        group: any EventLoopGroup
    ) async throws {
        var channels: [any Channel] = []
        channels.reserveCapacity(count)
        var batch: [EventLoopFuture<any Channel>] = []
        func flush() async throws {
            for future in batch { channels.append(try await future.get()) }
            batch.removeAll(keepingCapacity: true)
        }
        for index in 0..<count {
            let loop = group.next()
            let handshake = tls == nil ? nil : loop.makePromise(of: TLSConnectionInfo.self)
            var bootstrap = ClientBootstrap(group: loop)
            if !sources.isEmpty { bootstrap = bootstrap.bind(to: sources[index % sources.count]) }
            let future =
                bootstrap
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        if let tls {
                            try channel.pipeline.syncOperations.addHandler(
                                TLSHandler(context: tls, expectedHost: serverName, handshakeCompleted: handshake)
                            )
                        }
                    }
                }
                .connect(to: address)
                .flatMap { channel in
                    guard let handshake else { return loop.makeSucceededFuture(channel) }
                    return handshake.futureResult.map { _ in channel }
                }
            batch.append(future)
            if batch.count >= 100 { try await flush() }
        }
        try await flush()
        FileHandle.standardOutput.write(Data("holding \(channels.count) connections\n".utf8))
        while readLine() != nil {}
        for channel in channels { channel.close(promise: nil) }
    }
}

extension Framing: ExpressibleByArgument {}
