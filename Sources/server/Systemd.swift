import Foundation
import LengthEchoCore

#if canImport(Glibc)
import Glibc
#endif

/// systemd's notify protocol, without libsystemd: one datagram per state change to `$NOTIFY_SOCKET`
/// (`READY=1`, `RELOADING=1`, `STOPPING=1`, `STATUS=...`, `WATCHDOG=1`). Does nothing when not run by
/// systemd (no `$NOTIFY_SOCKET`).
final class SystemdNotifier: Sendable {
    private let fd: Int32
    private let address: [UInt8]
    /// Half the watchdog interval systemd asked for (`$WATCHDOG_USEC`), when it asked this process.
    let watchdogInterval: Duration?

    init(environment: [String: String] = ProcessInfo.processInfo.environment) {
        let path = environment["NOTIFY_SOCKET"] ?? ""
        // An abstract socket is written `@name`; its address starts with NUL.
        self.address = path.hasPrefix("@") ? [0] + Array(path.utf8.dropFirst()) : Array(path.utf8)
        self.fd = path.isEmpty ? -1 : socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        if let usec = environment["WATCHDOG_USEC"].flatMap(Int.init), usec > 0,
            environment["WATCHDOG_PID"].flatMap(Int32.init).map({ $0 == getpid() }) ?? true
        {
            self.watchdogInterval = .microseconds(usec / 2)
        } else {
            self.watchdogInterval = nil
        }
        // Children must not talk to systemd in our name.
        for name in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] { unsetenv(name) }
    }

    deinit {
        if self.fd >= 0 { close(self.fd) }
    }

    /// Sends `state` (lines of `KEY=VALUE`) as one datagram.
    func notify(_ state: String) {
        guard self.fd >= 0 else { return }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let length = min(self.address.count, MemoryLayout.size(ofValue: address.sun_path))
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in self.address.prefix(length).enumerated() { raw[index] = byte }
        }
        let size = socklen_t(MemoryLayout<sa_family_t>.size + length)
        let bytes = Array(state.utf8)
        _ = bytes.withUnsafeBytes { buffer in
            withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    sendto(self.fd, buffer.baseAddress, buffer.count, Int32(MSG_NOSIGNAL), $0, size)
                }
            }
        }
    }

    /// `RELOADING=1` with the monotonic time systemd wants beside it.
    func reloading() {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        self.notify(
            "RELOADING=1\nMONOTONIC_USEC=\(Int(now.tv_sec) * 1_000_000 + Int(now.tv_nsec) / 1000)\nSTATUS=reloading")
    }
}

/// systemd's socket activation: the listening sockets systemd passes (`$LISTEN_FDS` from descriptor 3, for
/// this process: `$LISTEN_PID`), adopted instead of binding.
enum SocketActivation {
    struct Invalid: Error, CustomStringConvertible {
        let description: String
    }

    /// The passed sockets, or nil when there are none for this process. The variables are removed, so no
    /// child takes them for its own.
    static func listeningSockets() throws -> [Int32]? {
        let environment = ProcessInfo.processInfo.environment
        defer { for name in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] { unsetenv(name) } }
        guard let pid = environment["LISTEN_PID"].flatMap(Int32.init), pid == getpid(),
            let count = environment["LISTEN_FDS"].flatMap(Int32.init), count > 0
        else { return nil }
        let fds = Array(3..<(3 + count))
        for fd in fds {
            var type: Int32 = 0
            var listening: Int32 = 0
            var size = socklen_t(MemoryLayout<Int32>.size)
            guard getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &size) == 0, type == Int32(SOCK_STREAM.rawValue) else {
                throw Invalid(description: "descriptor \(fd) passed by systemd is not a stream socket")
            }
            size = socklen_t(MemoryLayout<Int32>.size)
            guard getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &size) == 0, listening == 1 else {
                throw Invalid(
                    description: "descriptor \(fd) passed by systemd is not listening (use ListenStream=, Accept=no)")
            }
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        }
        return fds
    }
}
