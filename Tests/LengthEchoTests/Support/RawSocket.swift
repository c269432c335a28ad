import Foundation

#if canImport(Glibc)
import LengthEchoCore
import LengthEchoTestSupport
import Glibc
#endif

/// A blocking BSD socket, used to speak to the server exactly as the original C client does (and to behave
/// badly on purpose). Every call is bounded by send and receive timeouts.
final class RawSocket: @unchecked Sendable {
    let fd: Int32

    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    init(fd: Int32) {
        self.fd = fd
    }

    /// `socket()` and `connect()` to 127.0.0.1 or `host` (or ::1), with every later read and write bounded.
    /// `receiveBuffer` shrinks the socket's receive buffer (before connecting, so the window is small too);
    /// `source` binds the socket to a local IPv4 address first (127.0.0.2: a second client address).
    static func connect(
        host: String = "127.0.0.1", port: Int, ipv6: Bool = false, timeout: Double = 10, receiveBuffer: Int32? = nil,
        source: String? = nil
    ) throws
        -> RawSocket
    {
        let fd = socket(ipv6 ? AF_INET6 : AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw Failure(description: "socket: \(errno)") }
        let socket = RawSocket(fd: fd)
        socket.setTimeouts(timeout)
        if var size = receiveBuffer {
            setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        }
        if let source {
            var local = sockaddr_in()
            local.sin_family = sa_family_t(AF_INET)
            guard inet_pton(AF_INET, source, &local.sin_addr) == 1 else { throw Failure(description: "bad \(source)") }
            let bound = withUnsafePointer(to: &local) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
            guard bound == 0 else { throw Failure(description: "bind \(source): \(String(cString: strerror(errno)))") }
        }
        var result: Int32
        if ipv6 {
            var address = sockaddr_in6()
            address.sin6_family = sa_family_t(AF_INET6)
            address.sin6_port = in_port_t(UInt16(port).bigEndian)
            address.sin6_addr = in6addr_loopback
            result = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size))
                }
            }
        } else {
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = in_port_t(UInt16(port).bigEndian)
            guard inet_pton(AF_INET, host, &address.sin_addr) == 1 else { throw Failure(description: "bad \(host)") }
            result = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
        }
        guard result == 0 else { throw Failure(description: "connect: \(String(cString: strerror(errno)))") }
        return socket
    }

    func setTimeouts(_ seconds: Double) {
        var value = timeval(tv_sec: Int(seconds), tv_usec: Int((seconds - seconds.rounded(.down)) * 1e6))
        setsockopt(self.fd, SOL_SOCKET, SO_RCVTIMEO, &value, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(self.fd, SOL_SOCKET, SO_SNDTIMEO, &value, socklen_t(MemoryLayout<timeval>.size))
    }

    func setNoDelay() {
        var one: Int32 = 1
        setsockopt(self.fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
    }

    /// Writes every byte, or throws.
    func write(_ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes {
                Glibc.send(self.fd, $0.baseAddress! + offset, bytes.count - offset, Int32(MSG_NOSIGNAL))
            }
            if n < 0 {
                if errno == EINTR { continue }
                throw Failure(description: "write: \(String(cString: strerror(errno)))")
            }
            offset += n
        }
    }

    func write(_ text: String) throws {
        try self.write(Array(text.utf8))
    }

    /// One `read()`: the bytes it returned, empty at end of stream.
    func readOnce(max: Int = 65536) throws -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: max)
        while true {
            let n = buffer.withUnsafeMutableBytes { Glibc.recv(self.fd, $0.baseAddress, max, 0) }
            if n < 0 {
                if errno == EINTR { continue }
                throw Failure(description: "read: \(String(cString: strerror(errno)))")
            }
            return Array(buffer[0..<n])
        }
    }

    /// Reads until a NUL (returned without it), as the C client does; nil if the stream ends first.
    func readReply(until terminator: UInt8 = 0) throws -> [UInt8]? {
        var reply: [UInt8] = []
        var byte: UInt8 = 0
        while true {
            let n = Glibc.recv(self.fd, &byte, 1, 0)
            if n < 0 {
                if errno == EINTR { continue }
                throw Failure(description: "read: \(String(cString: strerror(errno)))")
            }
            if n == 0 { return nil }
            if byte == terminator { return reply }
            reply.append(byte)
        }
    }

    /// A reply as text, read up to `terminator` (a NUL unless told otherwise).
    func readReplyText(until terminator: UInt8 = 0) throws -> String? {
        try self.readReply(until: terminator).map { String(decoding: $0, as: UTF8.self) }
    }

    /// Reads everything until the server closes.
    func readToEnd() throws -> [UInt8] {
        var all: [UInt8] = []
        while true {
            let chunk = try self.readOnce()
            if chunk.isEmpty { return all }
            all += chunk
        }
    }

    /// Reads everything until the server closes or resets the connection (a server that closes with input
    /// unread resets it); throws only on other failures, such as the read timing out.
    func readUntilClosed() throws -> [UInt8] {
        var all: [UInt8] = []
        while true {
            var chunk = [UInt8](repeating: 0, count: 65536)
            let n = chunk.withUnsafeMutableBytes { read(self.fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == ECONNRESET { return all }
            guard n >= 0 else { throw Failure(description: "read: \(String(cString: strerror(errno)))") }
            if n == 0 { return all }
            all += chunk[..<n]
        }
    }

    /// Writes as much of `bytes` as the socket takes without blocking; returns how much that was.
    func writeWithoutBlocking(_ bytes: [UInt8]) -> Int {
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { raw in
                Glibc.send(self.fd, raw.baseAddress! + offset, raw.count - offset, Int32(MSG_DONTWAIT))
            }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            offset += n
        }
        return offset
    }

    /// Makes the close (when this socket is released) a reset rather than a FIN (SO_LINGER 0), as a peer that
    /// crashes or is killed does.
    func resetOnClose() {
        var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
        setsockopt(self.fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
    }

    /// Linux's POLLRDHUP (the peer shut its write side), which Glibc exports only under _GNU_SOURCE.
    private static let pollReadHangUp: Int16 = 0x2000

    /// Waits (without reading) until the server has closed its end, by FIN or by reset, or `seconds` pass.
    /// Returns whether it did.
    func waitForPeerClose(seconds: Double) -> Bool {
        var entry = pollfd(fd: self.fd, events: Self.pollReadHangUp, revents: 0)
        let deadline = Date().addingTimeInterval(seconds)
        while true {
            let left = Int32(max(0, deadline.timeIntervalSinceNow) * 1000)
            let n = poll(&entry, 1, left)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return false }
            return entry.revents & (Self.pollReadHangUp | Int16(POLLHUP | POLLERR)) != 0
        }
    }

    /// Waits until the server has closed the connection altogether, not only its write side (a server that
    /// refuses a peer shuts its write side, then lingers reading for a while). After the FIN, a byte every
    /// 0.1 s finds out: once the server's socket is gone, the kernel answers it with a reset.
    func waitForServerGone(seconds: Double) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        guard self.waitForPeerClose(seconds: seconds) else { return false }
        while Date() < deadline {
            var entry = pollfd(fd: self.fd, events: 0, revents: 0)
            if poll(&entry, 1, 0) > 0, entry.revents & Int16(POLLERR | POLLHUP) != 0 { return true }
            let sent = [UInt8(0x7A)].withUnsafeBytes { Glibc.send(self.fd, $0.baseAddress, 1, Int32(MSG_NOSIGNAL)) }
            if sent < 0 { return true }
            entry = pollfd(fd: self.fd, events: 0, revents: 0)
            if poll(&entry, 1, 100) > 0, entry.revents & Int16(POLLERR | POLLHUP) != 0 { return true }
        }
        return false
    }

    /// Whether a reply (or anything) is waiting to be read within `seconds`.
    func readable(within seconds: Double) -> Bool {
        var entry = pollfd(fd: self.fd, events: Int16(POLLIN), revents: 0)
        return poll(&entry, 1, Int32(seconds * 1000)) > 0
    }

    func shutdownWrite() {
        Glibc.shutdown(self.fd, Int32(SHUT_WR))
    }

    deinit {
        Glibc.close(self.fd)
    }
}

/// A server that behaves as the original C tutorial server does: one client at a time, one `read()` into a
/// 1024-byte buffer, a reply of `strlen` then the message, then `close()`.
final class OriginalStyleServer: @unchecked Sendable {
    let port: Int
    private let fd: Int32
    private let lock = NSLock()
    private var _accepted = 0
    var accepted: Int { self.lock.withLock { self._accepted } }

    /// - Parameter terminate: whether the reply ends with a NUL (the original's does when it writes
    ///   strlen+1 bytes) or only with the close.
    init(connections: Int, terminate: Bool) throws {
        let (fd, port) = try bindLoopback()
        guard listen(fd, 16) == 0 else { throw RawSocket.Failure(description: "listen failed") }
        self.fd = fd
        self.port = port
        let thread = Thread { [self] in
            for _ in 0..<connections {
                let client = accept(fd, nil, nil)
                guard client >= 0 else { return }
                self.lock.withLock { self._accepted += 1 }
                var buffer = [UInt8](repeating: 0, count: 1024)
                let n = read(client, &buffer, 1023)
                if n > 0 {
                    let message = String(decoding: buffer.prefix(while: { $0 != 0 }), as: UTF8.self)
                    var reply = Array("\(message.utf8.count) : \(message)".utf8)
                    if terminate { reply.append(0) }
                    _ = reply.withUnsafeBytes { Glibc.write(client, $0.baseAddress, $0.count) }
                }
                Glibc.close(client)
            }
        }
        thread.start()
    }

    deinit {
        Glibc.close(self.fd)
    }
}

/// A loopback port held bound but not listening: connecting to it is refused, and nobody else can take it
/// while this lives.
final class ClosedPort: @unchecked Sendable {
    let port: Int
    private let fd: Int32

    init() throws {
        (self.fd, self.port) = try bindLoopback()
    }

    deinit {
        Glibc.close(self.fd)
    }
}

/// A TCP socket bound to 127.0.0.1 on a port the system picked: the socket and the port.
func bindLoopback() throws -> (fd: Int32, port: Int) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = 0
    address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
    let bound = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard bound == 0 else {
        Glibc.close(fd)
        throw RawSocket.Failure(description: "bind failed")
    }
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
    }
    return (fd, Int(UInt16(bigEndian: address.sin_port)))
}
