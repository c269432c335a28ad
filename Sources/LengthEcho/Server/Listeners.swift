import LengthEchoCore
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Opening the listening sockets: resolve each configured host, check the port is really free, bind one
/// socket per event loop (SO_REUSEPORT), and fall back to IPv4 alone where the machine has no IPv6.
enum Listeners {
    /// Binds `configuration.hosts` on every loop with `bootstrap(loop, ipv6Only)`; returns the listeners.
    /// With `loopCPUs` (the CPU each loop is pinned to), each address's group of sockets gets the program that
    /// gives a connection to the loop on the CPU that received it (`CPUSteering`).
    ///
    /// - Throws: `LengthEchoError.bindFailed` with the reason; listeners already bound are closed first.
    static func bind(
        configuration: ServerConfiguration,
        loops: [any EventLoop],
        loopCPUs: [Int]? = nil,
        bootstrap: (any EventLoop, Bool) -> ServerBootstrap
    ) async throws(LengthEchoError) -> [any Channel] {
        if !configuration.listeningSockets.isEmpty {
            return try await Self.adopt(configuration.listeningSockets, loops: loops, bootstrap: bootstrap)
        }
        var listeners: [any Channel] = []
        var port = configuration.port
        let usingDefaults = configuration.hosts == ServerConfiguration.allAddresses
        do {
            for host in configuration.hosts {
                guard let address = try? SocketAddress.makeAddressResolvingHost(host, port: port) else {
                    throw LengthEchoError.bindFailed(host: host, port: port, reason: .hostNotFound)
                }
                // Where the default `::` cannot be had, IPv4 alone is served: said once, not an error.
                func ipv6Missing(_ errno: Int32?) -> Bool {
                    guard usingDefaults, address.protocol == .inet6, errno == EAFNOSUPPORT || errno == EADDRNOTAVAIL
                    else {
                        return false
                    }
                    configuration.logger.info("IPv6 is not available here; listening on IPv4 only")
                    return true
                }
                // SO_REUSEPORT would let us share a port another server of this user already holds: check first.
                if port != 0, let errno = Self.probe(address), errno != 0 {
                    if ipv6Missing(errno) { continue }
                    throw LengthEchoError.bindFailed(host: host, port: port, reason: Self.reason(errno: errno))
                }
                let group = listeners.count
                for loop in loops {
                    do {
                        let target = try SocketAddress.makeAddressResolvingHost(host, port: port)
                        let listener = try await bootstrap(loop, address.protocol == .inet6).bind(to: target).get()
                        listeners.append(listener)
                        if port == 0 { port = listener.localAddress?.port ?? 0 }
                    } catch {
                        let errno = (error as? IOError)?.errnoCode
                        if ipv6Missing(errno) { break }
                        throw LengthEchoError.bindFailed(
                            host: host,
                            port: port,
                            reason: errno.map(Self.reason(errno:)) ?? .other("\(error)")
                        )
                    }
                }
                if let loopCPUs, listeners.count == group + loops.count {
                    do {
                        try await CPUSteering.attach(to: listeners[group], loopCPUs: loopCPUs)
                    } catch {
                        configuration.logger.warning(
                            "connections to \(host) cannot be steered to the loop on their CPU (\(error)); the kernel spreads them by hash"
                        )
                    }
                }
            }
        } catch {
            for listener in listeners { try? await listener.close() }
            throw error as? LengthEchoError ?? .bindFailed(host: "?", port: port, reason: .other("\(error)"))
        }
        return listeners
    }

    /// Serves sockets that are already listening (passed by systemd), each on one loop in turn: two loops
    /// polling one socket would race for each connection. Several passed sockets use several loops.
    static func adopt(
        _ sockets: [Int32],
        loops: [any EventLoop],
        bootstrap: (any EventLoop, Bool) -> ServerBootstrap
    ) async throws(LengthEchoError) -> [any Channel] {
        var listeners: [any Channel] = []
        do {
            for (index, socket) in sockets.enumerated() {
                let loop = loops[index % loops.count]
                listeners.append(try await bootstrap(loop, false).withBoundSocket(socket).get())
            }
        } catch {
            for listener in listeners { try? await listener.close() }
            let errno = (error as? IOError)?.errnoCode
            throw .bindFailed(
                host: "a passed socket", port: 0, reason: errno.map(Self.reason(errno:)) ?? .other("\(error)"))
        }
        return listeners
    }

    /// Binds a plain socket (SO_REUSEADDR only) to `address` and closes it: 0 if the address is free, else the errno.
    static func probe(_ address: SocketAddress) -> Int32? {
        let fd = socket(Int32(address.protocol.rawValue), Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return errno }
        defer { close(fd) }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        if address.protocol == .inet6 {
            setsockopt(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &one, socklen_t(MemoryLayout<Int32>.size))
        }
        let result = address.withSockAddr { pointer, size in Glibc.bind(fd, pointer, socklen_t(size)) }
        return result == 0 ? 0 : errno
    }

    static func reason(errno: Int32) -> LengthEchoError.BindFailure {
        switch errno {
        case EADDRINUSE: .addressInUse
        case EACCES: .permissionDenied
        case EADDRNOTAVAIL: .noSuchAddress
        case EAFNOSUPPORT: .familyNotSupported
        default: .other(String(cString: strerror(errno)))
        }
    }
}
