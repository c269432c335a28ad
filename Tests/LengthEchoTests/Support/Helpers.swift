import Foundation
import LengthEcho
import LengthEchoCore
import LengthEchoTestSupport
import Logging
import NIOCore
import Testing

/// A server on 127.0.0.1 and a port the system picked, quiet unless a test asks otherwise.
func startServer(_ configure: (inout ServerConfiguration) -> Void = { _ in }) async throws -> LengthEchoServer {
    var configuration = ServerConfiguration()
    configuration.hosts = ["127.0.0.1"]
    configuration.port = 0
    configuration.threads = 2
    var logger = Logger(label: "test-server")
    logger.logLevel = .critical
    configuration.logger = logger
    configure(&configuration)
    return try await LengthEchoServer.start(configuration: configuration)
}

/// Runs blocking socket code off the cooperative pool.
func blocking<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        Thread {
            continuation.resume(with: Result { try body() })
        }.start()
    }
}

/// Whether this machine can bind the IPv6 loopback address (containers sometimes cannot).
func ipv6LoopbackAvailable() -> Bool {
    guard let address = try? SocketAddress(ipAddress: "::1", port: 0) else { return false }
    let fd = socket(AF_INET6, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    return address.withSockAddr { pointer, size in bind(fd, pointer, socklen_t(size)) } == 0
}

/// The `server` executable on 127.0.0.1 and a port the system picked, with `flags`; and that port.
func startServerExecutable(_ flags: [String] = []) async throws -> (Executable, Int) {
    let server = try Executable("server", ["--host", "127.0.0.1", "--port", "0"] + flags)
    await server.wait { $0.stderr.contains("listening on") || !$0.isRunning }
    let line = try #require(server.stderr.split(separator: "\n").first { $0.contains("listening on") })
    let port = try #require(line.split(separator: ":").last.flatMap { Int($0.prefix { $0.isNumber }) })
    return (server, port)
}

/// A process's resident memory, in KiB (VmRSS).
func residentKiB(_ pid: pid_t) -> Int {
    let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
    let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
    return Int(line.split(separator: " ").dropFirst().first ?? "") ?? -1
}

/// `openssl s_client` to 127.0.0.1:`port`, trusting `ca`, with `input` (a printf format: backslash-0 is a NUL) on its
/// standard input and `flags`; its exit status and what it printed (its standard error too, with `errors`).
func sClient(
    port: Int, ca: String, sending input: String, _ flags: String, errors: Bool
) async throws -> (status: Int32, output: String) {
    try await blocking {
        try run(
            "/bin/sh",
            [
                "-c",
                "printf '\(input)' | timeout 10 openssl s_client -connect 127.0.0.1:\(port) -CAfile \(ca) \(flags) "
                    + (errors ? "2>&1" : "2>/dev/null"),
            ])
    }
}

/// A TLS server with the test certificates whose idle timeout ends each `openssl s_client` (which, with
/// `-quiet` or `-ign_eof`, reads until the server closes, with close_notify).
func startServerForSClient(
    _ certificates: TestCertificates, idleTimeout: TimeAmount
) async throws
    -> LengthEchoServer
{
    let context = certificates.serverSettings()
    return try await startServer {
        $0.tls = context
        $0.idleTimeout = idleTimeout
    }
}
