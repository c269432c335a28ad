import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// What a PROXY protocol header said about the connection it begins.
package enum ProxyHeader: Equatable, Sendable {
    /// The balancer's own connection (v2 `LOCAL`, a health check): served as the connection itself.
    case local
    /// The balancer relays a client: where the client came from, and the address it connected to.
    case proxied(source: SocketAddress, destination: SocketAddress)
    /// v1 `UNKNOWN`, or a v2 family or transport that is not TCP over IPv4 or IPv6: the socket's own
    /// address stays the peer.
    case unknown
}

/// A header that is not valid, or not finished in time; the description says which rule it broke.
package struct ProxyProtocolError: Error, Equatable, CustomStringConvertible, Sendable {
    package let description: String

    package init(_ description: String) {
        self.description = description
    }
}

/// The PROXY protocol, versions 1 (text) and 2 (binary), as HAProxy's `doc/proxy-protocol.txt` specifies
/// it, receiver side. A header is never guessed at: the bytes either begin with one of the two signatures
/// or they are refused, as soon as they cannot become one.
package enum ProxyProtocol {
    /// The v2 signature. Its fifth byte is NUL, which is why the header must never reach the framer.
    package static let v2Signature: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]
    static let v1Signature: [UInt8] = Array("PROXY ".utf8)
    /// The longest v1 line the specification allows, CRLF included.
    package static let maximumV1Length = 107
    /// The longest v2 header accepted, the 16 fixed bytes included. The length field allows 64 KiB; what
    /// balancers send (addresses, a few TLVs: ALPN, authority, unique ID, TLS details) fits well within this.
    package static let maximumV2Length = 4096

    /// Parses the header at the start of `bytes`. Returns nil while it is incomplete (and could still become
    /// valid), or the header and how many bytes it took; what follows belongs to the connection.
    package static func parse(_ bytes: ByteBuffer) throws(ProxyProtocolError) -> (header: ProxyHeader, length: Int)? {
        let view = bytes.readableBytesView
        guard let first = view.first else { return nil }
        if first == v1Signature[0] {
            try checkPrefix(view, v1Signature)
            return try parseV1(view)
        }
        if first == v2Signature[0] {
            try checkPrefix(view, v2Signature)
            return try parseV2(bytes)
        }
        throw ProxyProtocolError("the connection did not begin with a PROXY protocol header")
    }

    /// Throws once the bytes so far diverge from `signature`.
    private static func checkPrefix(_ view: ByteBufferView, _ signature: [UInt8]) throws(ProxyProtocolError) {
        for (byte, expected) in zip(view, signature) where byte != expected {
            throw ProxyProtocolError("the connection did not begin with a PROXY protocol header")
        }
    }

    // MARK: version 1

    private static func parseV1(_ view: ByteBufferView) throws(ProxyProtocolError) -> (ProxyHeader, Int)? {
        // Up to CR LF, printable ASCII only: decided byte by byte, so more bytes never change an answer.
        var index = view.index(view.startIndex, offsetBy: min(v1Signature.count, view.count))
        var length = v1Signature.count
        while index < view.endIndex {
            let byte = view[index]
            length += 1
            if byte == UInt8(ascii: "\r") {
                guard length < maximumV1Length else {
                    throw ProxyProtocolError("PROXY v1 header longer than \(maximumV1Length) bytes")
                }
                let next = view.index(after: index)
                guard next < view.endIndex else { return nil }
                guard view[next] == UInt8(ascii: "\n") else { throw ProxyProtocolError("PROXY v1 line: CR without LF") }
                length += 1
                break
            }
            if byte == UInt8(ascii: "\n") { throw ProxyProtocolError("PROXY v1 line ends without CR") }
            guard (0x20...0x7E).contains(byte) else {
                throw ProxyProtocolError("PROXY v1 line holds a byte that is not printable ASCII")
            }
            guard length < maximumV1Length else {
                throw ProxyProtocolError("PROXY v1 header longer than \(maximumV1Length) bytes")
            }
            index = view.index(after: index)
        }
        guard index < view.endIndex else { return nil }
        let line = Array(view[view.index(view.startIndex, offsetBy: v1Signature.count)..<index])
        let fields = line.split(separator: UInt8(ascii: " "), omittingEmptySubsequences: false).map {
            String(decoding: $0, as: UTF8.self)
        }
        switch fields.first {
        case "UNKNOWN":
            return (.unknown, length)  // the rest of the line, if any, is to be ignored
        case "TCP4", "TCP6":
            guard fields.count == 5 else {
                throw ProxyProtocolError(
                    "PROXY v1 line: expected \(fields[0]) SOURCE DESTINATION SOURCE-PORT DESTINATION-PORT")
            }
            let v6 = fields[0] == "TCP6"
            let source = try v1Address(fields[1], port: fields[3], v6: v6)
            let destination = try v1Address(fields[2], port: fields[4], v6: v6)
            return (.proxied(source: source, destination: destination), length)
        default:
            throw ProxyProtocolError("PROXY v1 line: unknown protocol (TCP4, TCP6 or UNKNOWN expected)")
        }
    }

    private static func v1Address(_ host: String, port: String, v6: Bool) throws(ProxyProtocolError) -> SocketAddress {
        guard (1...5).contains(port.utf8.count), port.utf8.allSatisfy({ (0x30...0x39).contains($0) }),
            let number = Int(port), number <= 65535
        else { throw ProxyProtocolError("PROXY v1 line: bad port") }
        let address: SocketAddress
        do {
            address = try SocketAddress(ipAddress: host, port: number)
        } catch {
            throw ProxyProtocolError("PROXY v1 line: bad \(v6 ? "IPv6" : "IPv4") address")
        }
        switch address {
        case .v4 where !v6, .v6 where v6: return address
        default: throw ProxyProtocolError("PROXY v1 line: bad \(v6 ? "IPv6" : "IPv4") address")
        }
    }

    // MARK: version 2

    private static func parseV2(_ bytes: ByteBuffer) throws(ProxyProtocolError) -> (ProxyHeader, Int)? {
        guard bytes.readableBytes >= 16,
            let versionCommand = bytes.getInteger(at: bytes.readerIndex + 12, as: UInt8.self),
            let family = bytes.getInteger(at: bytes.readerIndex + 13, as: UInt8.self),
            let declared = bytes.getInteger(at: bytes.readerIndex + 14, as: UInt16.self)
        else { return nil }
        guard versionCommand >> 4 == 2 else { throw ProxyProtocolError("PROXY v2 header: version is not 2") }
        let command = versionCommand & 0x0F
        guard command <= 1 else { throw ProxyProtocolError("PROXY v2 header: unknown command \(command)") }
        let length = 16 + Int(declared)
        guard length <= maximumV2Length else {
            throw ProxyProtocolError("PROXY v2 header of \(length) bytes: more than \(maximumV2Length) accepted")
        }
        guard bytes.readableBytes >= length else { return nil }
        let body = bytes.readerIndex + 16
        let addressLength: Int
        switch family {
        case 0x11, 0x12: addressLength = 12  // IPv4: TCP, UDP
        case 0x21, 0x22: addressLength = 36  // IPv6
        case 0x31, 0x32: addressLength = 216  // Unix
        default: addressLength = 0  // UNSPEC (or unknown): no address block
        }
        guard Int(declared) >= addressLength else {
            throw ProxyProtocolError("PROXY v2 header: too short for its address family")
        }
        try checkTLVs(bytes, from: body + addressLength, to: body + Int(declared))
        // LOCAL: the balancer speaking for itself; the addresses, if any, are to be ignored.
        guard command == 1 else { return (.local, length) }
        switch family {
        case 0x11:
            return (
                .proxied(source: v4(bytes, body, port: body + 8), destination: v4(bytes, body + 4, port: body + 10)),
                length
            )
        case 0x21:
            return (
                .proxied(source: v6(bytes, body, port: body + 32), destination: v6(bytes, body + 16, port: body + 34)),
                length
            )
        default:
            return (.unknown, length)  // UDP, Unix or unspecified: not what this TCP server routes by
        }
    }

    /// TLVs are skipped, but each must lie within the header.
    private static func checkTLVs(_ bytes: ByteBuffer, from start: Int, to end: Int) throws(ProxyProtocolError) {
        var index = start
        while index < end {
            guard index + 3 <= end, let length = bytes.getInteger(at: index + 1, as: UInt16.self),
                index + 3 + Int(length) <= end
            else { throw ProxyProtocolError("PROXY v2 header: a TLV runs past the end of the header") }
            index += 3 + Int(length)
        }
    }

    private static func v4(_ bytes: ByteBuffer, _ at: Int, port: Int) -> SocketAddress {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = (bytes.getInteger(at: port, as: UInt16.self) ?? 0).bigEndian
        address.sin_addr.s_addr = (bytes.getInteger(at: at, as: UInt32.self) ?? 0).bigEndian
        return SocketAddress(address, host: "")
    }

    private static func v6(_ bytes: ByteBuffer, _ at: Int, port: Int) -> SocketAddress {
        var address = sockaddr_in6()
        address.sin6_family = sa_family_t(AF_INET6)
        address.sin6_port = (bytes.getInteger(at: port, as: UInt16.self) ?? 0).bigEndian
        withUnsafeMutableBytes(of: &address.sin6_addr) { raw in
            for offset in 0..<16 { raw[offset] = bytes.getInteger(at: at + offset, as: UInt8.self) ?? 0 }
        }
        return SocketAddress(address, host: "")
    }
}

extension AddressPolicy {
    /// An address range, `10.0.0.0/8` or `2001:db8::/32` (a single address without a length): who may send
    /// PROXY headers, and later who may connect at all. An IPv4-mapped range (`::ffff:192.0.2.0/120`) is the IPv4
    /// range it maps (`192.0.2.0/24`), so it matches the same peers whether the server listens on an IPv4 address or
    /// on `[::]`; one shorter than /96 would reach outside the mapped space, and is refused.
    public struct AddressRange: Sendable, Equatable, CustomStringConvertible {
        private let network: [UInt8]
        /// How many leading bits of an address must match.
        public let prefixLength: Int
        /// Whether the text had bits set past the prefix (`10.0.0.1/24`): the range is its network (`10.0.0.0/24`),
        /// which may not be what was meant.
        public let hostBitsSet: Bool

        /// Why a text is not an address range.
        public struct ParseError: Error, CustomStringConvertible, Sendable {
            /// What is wrong with the text.
            public let description: String
        }

        /// Parses `ADDRESS[/LENGTH]`; nil when it is not one (`parse` says why).
        public init?(_ text: String) {
            guard case .success(let range) = Self.parse(text) else { return nil }
            self = range
        }

        private init(network: [UInt8], prefixLength: Int, hostBitsSet: Bool) {
            self.network = network
            self.prefixLength = prefixLength
            self.hostBitsSet = hostBitsSet
        }

        /// Parses `ADDRESS[/LENGTH]`, or says why it is not a range.
        public static func parse(_ text: String) -> Result<AddressRange, ParseError> {
            let parts = text.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
            guard let address = try? SocketAddress(ipAddress: String(parts[0]), port: 0),
                var bytes = Self.bytes(of: address)
            else {
                return .failure(ParseError(description: "not an address or CIDR range (10.0.0.0/8, 192.0.2.7, ::1)"))
            }
            var length = bytes.count * 8
            if parts.count == 2 {
                guard let value = Int(parts[1]), (0...bytes.count * 8).contains(value), parts[1].allSatisfy(\.isNumber)
                else {
                    return .failure(ParseError(description: "the prefix length must be 0...\(bytes.count * 8)"))
                }
                length = value
            }
            if bytes.count == 16, Self.isMapped(bytes) {
                guard length >= 96 else {
                    return .failure(
                        ParseError(
                            description:
                                "an IPv4-mapped range (::ffff:a.b.c.d) needs a prefix of /96 or longer; give the IPv4 range instead"
                        ))
                }
                bytes = Array(bytes[12...])
                length -= 96
            }
            let network = Self.masked(bytes, length)
            return .success(AddressRange(network: network, prefixLength: length, hostBitsSet: network != bytes))
        }

        private static func isMapped(_ bytes: [UInt8]) -> Bool {
            bytes[0..<10].allSatisfy({ $0 == 0 }) && bytes[10] == 0xFF && bytes[11] == 0xFF
        }

        /// Whether `address` lies in the range. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) counts as IPv4.
        public func contains(_ address: SocketAddress?) -> Bool {
            guard let address, var bytes = Self.bytes(of: address) else { return false }
            if bytes.count == 16, self.network.count == 4, Self.isMapped(bytes) {
                bytes = Array(bytes[12...])
            }
            guard bytes.count == self.network.count else { return false }
            return Self.masked(bytes, self.prefixLength) == self.network
        }

        /// `ADDRESS/LENGTH`.
        public var description: String {
            let host: String
            if self.network.count == 4 {
                host = self.network.map(String.init).joined(separator: ".")
            } else {
                var address = sockaddr_in6()
                address.sin6_family = sa_family_t(AF_INET6)
                withUnsafeMutableBytes(of: &address.sin6_addr) { raw in
                    for (offset, byte) in self.network.enumerated() { raw[offset] = byte }
                }
                host = SocketAddress(address, host: "").ipAddress ?? "?"
            }
            return "\(host)/\(self.prefixLength)"
        }

        private static func bytes(of address: SocketAddress) -> [UInt8]? {
            switch address {
            case .v4(let v4):
                return withUnsafeBytes(of: v4.address.sin_addr) { Array($0) }
            case .v6(let v6):
                return withUnsafeBytes(of: v6.address.sin6_addr) { Array($0) }
            case .unixDomainSocket:
                return nil
            }
        }

        private static func masked(_ bytes: [UInt8], _ length: Int) -> [UInt8] {
            bytes.enumerated().map { index, byte in
                let bits = min(max(length - index * 8, 0), 8)
                return bits == 8 ? byte : byte & ~(0xFF >> bits)
            }
        }
    }
}

/// Spelled as before inside the package.
package typealias AddressRange = AddressPolicy.AddressRange
