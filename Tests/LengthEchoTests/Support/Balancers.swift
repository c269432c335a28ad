import Foundation
import LengthEchoTestSupport
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Where a balancer test's backends live: each in a network namespace of its own, with its own address on a
/// bridge the test makes (10.77.N.0/24, the balancer side at .1), all removed when the test ends, pass or
/// fail. Where namespaces cannot be made (no root, no `ip`), the backends get distinct loopback addresses
/// instead (127.0.0.11, .12, ...), and the test says so.
final class BackendNetwork: @unchecked Sendable {
    let usesNamespaces: Bool
    /// The address the balancer's connections to the backends come from (what `--proxy-from` trusts).
    let balancerAddress: String
    /// An address on the balancer's side that is not trusted to send PROXY headers.
    let outsiderAddress: String
    private let prefix: String
    private let subnet: Int
    private let count: Int
    private var made: [[String]] = []

    static let ip = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip"].first {
        FileManager.default.isExecutableFile(atPath: $0)
    }
    private static let counter = Mutex(0)

    init(backends count: Int) throws {
        self.count = count
        let serial = Self.counter.withLock { value -> Int in
            value += 1
            return value
        }
        // Unique per test process and test: namespaces and links of other runs are never touched.
        self.subnet = 100 + Int(getpid() % 100) + serial * 3 % 50
        self.prefix = "le\(getpid() % 100000)x\(serial)"
        Self.removeLeftovers()
        var namespaces = false
        var made: [[String]] = []
        if geteuid() == 0, Self.ip != nil {
            do {
                try Self.makeNamespaces(prefix: self.prefix, subnet: self.subnet, count: count) { made.append($0) }
                namespaces = true
            } catch {
                print("BalancerTests: network namespaces could not be made (\(error)); using 127.0.0.x addresses")
                for command in made.reversed() { try? Self.run(command) }
                made = []
            }
        } else {
            print("BalancerTests: not root or no `ip`: backends on distinct 127.0.0.x addresses, not namespaces")
        }
        self.made = made
        self.usesNamespaces = namespaces
        self.balancerAddress = namespaces ? "10.77.\(self.subnet).1" : "127.0.0.1"
        self.outsiderAddress = namespaces ? "10.77.\(self.subnet).2" : "127.0.0.3"
    }

    /// Backend `index` (0-based): its namespace (nil on loopback) and address.
    func backend(_ index: Int) -> (namespace: String?, address: String) {
        self.usesNamespaces
            ? ("\(self.prefix)b\(index)", "10.77.\(self.subnet).\(11 + index)") : (nil, "127.0.0.\(11 + index)")
    }

    /// `executable arguments`, run inside backend `index`'s namespace.
    func command(_ index: Int, _ executable: String, _ arguments: [String]) -> (String, [String]) {
        guard let namespace = self.backend(index).namespace, let ip = Self.ip else { return (executable, arguments) }
        return (ip, ["netns", "exec", namespace, executable] + arguments)
    }

    private static func makeNamespaces(
        prefix: String, subnet: Int, count: Int, record: ([String]) -> Void
    ) throws {
        let bridge = "\(prefix)br"
        try Self.run(["link", "add", bridge, "type", "bridge"])
        record(["link", "del", bridge])
        try Self.run(["addr", "add", "10.77.\(subnet).1/24", "dev", bridge])
        try Self.run(["addr", "add", "10.77.\(subnet).2/24", "dev", bridge])  // the untrusted outsider
        try Self.run(["link", "set", bridge, "up"])
        for index in 0..<count {
            let namespace = "\(prefix)b\(index)"
            let link = "\(prefix)v\(index)"
            try Self.run(["netns", "add", namespace])
            record(["netns", "del", namespace])  // takes its end of the veth pair with it
            try Self.run(["link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", namespace])
            try Self.run(["link", "set", link, "master", bridge, "up"])
            try Self.run(["-n", namespace, "addr", "add", "10.77.\(subnet).\(11 + index)/24", "dev", "eth0"])
            try Self.run(["-n", namespace, "link", "set", "eth0", "up"])
            try Self.run(["-n", namespace, "link", "set", "lo", "up"])
        }
    }

    /// Removes what this made, in reverse.
    func tearDown() {
        for command in self.made.reversed() { try? Self.run(command) }
        self.made = []
    }

    deinit { self.tearDown() }

    /// Namespaces and bridges of test processes that died before cleaning up (a crash, a SIGKILL).
    private static func removeLeftovers() {
        guard geteuid() == 0, Self.ip != nil, let list = try? Self.output(["netns", "list"]) else { return }
        for line in list.split(separator: "\n") {
            let name = String(line.split(separator: " ").first ?? "")
            guard name.hasPrefix("le"), let x = name.firstIndex(of: "x"),
                let pid = Int32(name[name.index(name.startIndex, offsetBy: 2)..<x]), pid != getpid() % 100000,
                kill(pid, 0) != 0, errno == ESRCH
            else { continue }
            try? Self.run(["netns", "del", name])
            if let b = name.lastIndex(of: "b") { try? Self.run(["link", "del", String(name[..<b]) + "br"]) }
        }
    }

    struct CommandFailed: Error, CustomStringConvertible {
        let description: String
    }

    private static func run(_ arguments: [String]) throws {
        _ = try Self.output(arguments)
    }

    private static func output(_ arguments: [String]) throws -> String {
        guard let ip = Self.ip else { throw CommandFailed(description: "no ip command") }
        let result = try LengthEchoTestSupport.run(ip, arguments)
        guard result.status == 0 else {
            throw CommandFailed(description: "ip \(arguments.joined(separator: " ")): \(result.output)")
        }
        return result.output
    }
}

/// A length-echo server behind the balancer: the `server` executable in a backend's namespace, on port 4000
/// of the backend's address, trusting the balancer's PROXY headers, logging JSON.
final class Backend: @unchecked Sendable {
    let index: Int
    let address: String
    let port: Int
    private(set) var process: Executable
    private let network: BackendNetwork
    private let flags: [String]
    /// Connection lines of earlier processes of this backend (before a restart).
    private var earlierLines: [[String: Any]] = []

    init(_ network: BackendNetwork, index: Int, port: Int = 4000, flags: [String] = []) async throws {
        self.network = network
        self.index = index
        self.address = network.backend(index).address
        self.port = port
        self.flags = flags
        self.process = try await Self.start(network, index: index, port: port, flags: flags)
    }

    private static func start(
        _ network: BackendNetwork, index: Int, port: Int, flags: [String]
    ) async throws
        -> Executable
    {
        let (executable, arguments) = network.command(
            index, Executable.productsDirectory + "/server",
            [
                "--host", network.backend(index).address, "--port", "\(port)", "--proxy-protocol", "--proxy-from",
                network.balancerAddress, "--log-format", "json", "--quiet", "--drain-timeout", "5",
            ] + flags)
        let process = try Executable(executable, arguments)
        await process.wait(seconds: 10) { $0.stderr.contains("listening on") || !$0.isRunning }
        try #require(process.isRunning, "backend \(index) did not start: \(process.stderr)")
        return process
    }

    /// Starts it again (after it was stopped or killed), keeping the lines it logged so far.
    func restart() async throws {
        self.earlierLines += connectionLines(self.process)
        self.process = try await Self.start(self.network, index: self.index, port: self.port, flags: self.flags)
    }

    /// Every connection line it logged, across restarts.
    var lines: [[String: Any]] { self.earlierLines + connectionLines(self.process) }

    func stop(signal: Int32 = SIGTERM) { self.process.terminate(signal: signal) }
}

/// HAProxy (Debian's), in the foreground, with its admin socket and its log (state changes, checks) on stdout.
final class HAProxy: @unchecked Sendable {
    let process: Executable
    let directory: String
    var adminSocket: String { self.directory + "/admin.sock" }

    static let path = ["/usr/sbin/haproxy", "/usr/bin/haproxy"].first {
        FileManager.default.isExecutableFile(atPath: $0)
    }

    /// `sections`: the frontends, backends and listeners; global settings and defaults are added.
    init(_ sections: String) async throws {
        let path = try #require(Self.path, "haproxy is not installed (.ci/run installs it)")
        self.directory = NSTemporaryDirectory() + "length-echo-haproxy-\(getpid())-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: self.directory, withIntermediateDirectories: true)
        let configuration = """
            global
                stats socket \(self.directory)/admin.sock mode 600 level admin
                log stdout format raw local0
            defaults
                mode tcp
                log global
                option log-health-checks
                option dontlog-normal
                timeout connect 2s
                timeout client 30s
                timeout server 30s
                retries 3
                option redispatch 1
            \(sections)

            """
        try configuration.write(toFile: self.directory + "/haproxy.cfg", atomically: true, encoding: .utf8)
        self.process = try Executable(path, ["-f", self.directory + "/haproxy.cfg", "-db"])
        // Bound to its ports once it logs anything (the first check result); a configuration error ends it.
        await self.process.wait(seconds: 10) { !$0.stdout.isEmpty || !$0.isRunning }
        try #require(self.process.isRunning, "haproxy did not start: \(self.process.stderr)")
    }

    /// Waits (at most `seconds`) until HAProxy's log has `text` `count` times; whether it did.
    @discardableResult
    func waitForLog(_ text: String, count: Int = 1, seconds: Double = 10) async -> Bool {
        await self.process.wait(seconds: seconds) {
            $0.stdout.components(separatedBy: text).count > count || !$0.isRunning
        }
            && self.logCount(text) >= count
    }

    func logCount(_ text: String) -> Int { self.process.stdout.components(separatedBy: text).count - 1 }

    /// One command on the admin socket; its answer.
    func admin(_ command: String) throws -> String {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw RawSocket.Failure(description: "socket: \(errno)") }
        defer { close(fd) }
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (offset, byte) in self.adminSocket.utf8.prefix(raw.count - 1).enumerated() { raw[offset] = byte }
        }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard connected == 0 else { throw RawSocket.Failure(description: "admin socket: \(errno)") }
        let line = Array((command + "\n").utf8)
        _ = line.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        var answer: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = read(fd, &chunk, chunk.count)
            if n <= 0 { break }
            answer += chunk[..<n]
        }
        return String(decoding: answer, as: UTF8.self)
    }

    func stop() {
        self.process.terminate(signal: SIGKILL)
        try? FileManager.default.removeItem(atPath: self.directory)
    }

    deinit { self.stop() }
}

/// nginx (Debian's, with its stream module), in the foreground, one worker, its files in a folder of its own.
final class Nginx: @unchecked Sendable {
    let process: Executable
    let directory: String

    static let path = ["/usr/sbin/nginx", "/usr/bin/nginx"].first { FileManager.default.isExecutableFile(atPath: $0) }
    static let streamModule = "/usr/lib/nginx/modules/ngx_stream_module.so"

    /// `stream`: the body of the `stream { }` block.
    init(stream: String) async throws {
        let path = try #require(Self.path, "nginx is not installed (.ci/run installs it)")
        self.directory = NSTemporaryDirectory() + "length-echo-nginx-\(getpid())-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: self.directory, withIntermediateDirectories: true)
        let configuration = """
            load_module \(Self.streamModule);
            daemon off;
            master_process off;
            worker_processes 1;
            pid \(self.directory)/nginx.pid;
            error_log stderr notice;
            events { worker_connections 256; }
            stream {
            \(stream)
            }

            """
        try configuration.write(toFile: self.directory + "/nginx.conf", atomically: true, encoding: .utf8)
        self.process = try Executable(path, ["-c", self.directory + "/nginx.conf", "-p", self.directory])
        await self.process.wait(seconds: 10) { $0.stderr.contains("getrlimit") || !$0.isRunning }
        try #require(self.process.isRunning, "nginx did not start: \(self.process.stderr)")
    }

    func stop() {
        self.process.terminate(signal: SIGKILL)
        try? FileManager.default.removeItem(atPath: self.directory)
    }

    deinit { self.stop() }
}
