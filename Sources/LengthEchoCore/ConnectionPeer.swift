import NIOCore

/// Who is on the other end of one connection, as every later stage and log line should name it.
///
/// It starts as the socket's remote address. A stage that learns better replaces it: the PROXY protocol
/// stage, behind a balancer, sets `address` to the client the header names and keeps the balancer's own
/// address in `via`. Anything that logs, limits or authorizes by address reads it from here, never from
/// `channel.remoteAddress`. A value: the connection's record holds the one that counts.
package struct ConnectionPeer: Sendable {
    /// The client: the socket's peer, or what a trusted stage in front of it said.
    package var address: SocketAddress?
    /// The proxy or balancer the connection came through, when a stage says there was one.
    package var via: SocketAddress?

    package init(address: SocketAddress?, via: SocketAddress? = nil) {
        self.address = address
        self.via = via
    }

    /// `ADDRESS:PORT` (`[ADDRESS]:PORT` for IPv6), or `?` when it is unknown.
    package var description: String { Self.format(self.address) }

    /// `ADDRESS:PORT`, with IPv6 addresses in brackets; a Unix socket by its path.
    package static func format(_ address: SocketAddress?) -> String {
        guard let address else { return "?" }
        switch address {
        case .v4:
            return "\(address.ipAddress ?? "?"):\(address.port ?? 0)"
        case .v6:
            return "[\(address.ipAddress ?? "?")]:\(address.port ?? 0)"
        case .unixDomainSocket:
            return address.pathname ?? "unix"
        }
    }
}
