import NIOCore

/// Who may connect at all, by address (the client's, after PROXY): `deny` ranges are refused; when `allow`
/// ranges are given, only addresses in one of them are served.
public struct AddressPolicy: Sendable, Equatable {
    /// Only addresses in one of these are served, when any are given.
    public var allow: [AddressRange]
    /// Addresses in any of these are refused.
    public var deny: [AddressRange]

    /// A policy of these ranges.
    public init(allow: [AddressRange] = [], deny: [AddressRange] = []) {
        self.allow = allow
        self.deny = deny
    }

    /// Nil when `address` may connect, else why not.
    public func refusal(for address: SocketAddress?) -> String? {
        if let range = self.deny.first(where: { $0.contains(address) }) {
            return "the address is in a denied range (\(range))"
        }
        if !self.allow.isEmpty, !self.allow.contains(where: { $0.contains(address) }) {
            return "the address is in no allowed range"
        }
        return nil
    }
}

/// An IP address as a hashable key (the port left out): what per-address limits count by.
package struct AddressKey: Hashable, Sendable {
    private let high: UInt64
    private let low: UInt64

    /// Nil for a Unix socket. An IPv4-mapped IPv6 address is its IPv4 address.
    package init?(_ address: SocketAddress?) {
        switch address {
        case .v4(let v4)?:
            self.high = 0
            self.low = UInt64(UInt32(bigEndian: v4.address.sin_addr.s_addr)) | 0xFFFF_0000_0000
        case .v6(let v6)?:
            // In network order, as the IPv4 key above: ::ffff:a.b.c.d then has the same key as a.b.c.d, and no
            // other IPv6 address does.
            let (high, low) = withUnsafeBytes(of: v6.address.sin6_addr) { raw -> (UInt64, UInt64) in
                (
                    UInt64(bigEndian: raw.loadUnaligned(fromByteOffset: 0, as: UInt64.self)),
                    UInt64(bigEndian: raw.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
                )
            }
            self.high = high
            self.low = low
        default:
            return nil
        }
    }
}
