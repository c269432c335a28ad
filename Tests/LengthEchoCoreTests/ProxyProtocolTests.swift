import LengthEchoCore
import NIOCore
import Testing

@Suite("PROXY protocol headers, v1 and v2")
struct ProxyProtocolTests {
    static let signature = ProxyProtocol.v2Signature

    private func parse(_ bytes: [UInt8]) throws(ProxyProtocolError) -> (header: ProxyHeader, length: Int)? {
        try ProxyProtocol.parse(ByteBuffer(bytes: bytes))
    }

    private func address(_ host: String, _ port: Int) throws -> SocketAddress {
        try SocketAddress(ipAddress: host, port: port)
    }

    /// For ranges, which take an optional address.
    private func ip(_ host: String, _ port: Int) -> SocketAddress? {
        try? SocketAddress(ipAddress: host, port: port)
    }

    private func error(_ bytes: [UInt8]) -> String? {
        do {
            _ = try self.parse(bytes)
            return nil
        } catch {
            return error.description
        }
    }

    /// A v2 header: command, family, address block, TLVs.
    static func v2(command: UInt8 = 1, family: UInt8, body: [UInt8]) -> [UInt8] {
        signature + [0x20 | command, family, UInt8(body.count >> 8), UInt8(body.count & 0xFF)] + body
    }

    @Test("v1 TCP4 and TCP6: the client and where it connected, and the header's exact length")
    func v1() throws {
        let line = Array("PROXY TCP4 203.0.113.7 192.0.2.1 5555 4000\r\n".utf8)
        let parsed = try #require(try self.parse(line + Array("hello\0".utf8)))
        #expect(parsed.length == line.count)
        #expect(
            parsed.header
                == .proxied(
                    source: try self.address("203.0.113.7", 5555), destination: try self.address("192.0.2.1", 4000)))
        let six = try #require(try self.parse(Array("PROXY TCP6 2001:db8::1 ::1 65535 0\r\n".utf8)))
        #expect(
            try six.header
                == .proxied(source: try self.address("2001:db8::1", 65535), destination: try self.address("::1", 0)))
        #expect(try self.parse(Array("PROXY UNKNOWN\r\n".utf8))?.header == .unknown)
        #expect(try self.parse(Array("PROXY UNKNOWN ffff::1 ::1 1 2\r\n".utf8))?.header == .unknown)
    }

    @Test("v1: incomplete is nil while it could still be a header, and refused once it cannot")
    func v1Incomplete() throws {
        let line = Array("PROXY TCP4 203.0.113.7 192.0.2.1 5555 4000\r\n".utf8)
        for cut in 0..<line.count {
            #expect(try self.parse(Array(line[..<cut])) == nil, "cut at \(cut)")
        }
        #expect(
            self.error(Array("PROXY TCP4 ".utf8) + [UInt8](repeating: 0x31, count: 100)) != nil, "no CRLF in 107 bytes")
        // 107 bytes with CRLF is the longest allowed; 108 is refused.
        let longest = Array("PROXY UNKNOWN ".utf8) + [UInt8](repeating: 0x78, count: 91) + [0x0D, 0x0A]
        #expect(longest.count == 107)
        #expect(try self.parse(longest)?.length == 107)
        #expect(self.error(Array("PROXY UNKNOWN ".utf8) + [UInt8](repeating: 0x78, count: 92) + [0x0D, 0x0A]) != nil)
        #expect(self.error(Array("PROXY TCP4 1.2.3.4\n".utf8)) != nil, "refused at the LF, before any CR arrives")
        #expect(self.error(Array("PROXX".utf8)) != nil, "refused at the first byte that differs")
        #expect(self.error(Array("hello\0".utf8)) == "the connection did not begin with a PROXY protocol header")
    }

    @Test(
        "v1: malformed lines are refused with the rule they broke",
        arguments: [
            ("PROXY TCP4 203.0.113.7 192.0.2.1 5555\r\n", "expected TCP4"),
            ("PROXY TCP4 203.0.113.7 192.0.2.1 5555 65536\r\n", "bad port"),
            ("PROXY TCP4 203.0.113.7 192.0.2.1 -1 4000\r\n", "bad port"),
            ("PROXY TCP4 2001:db8::1 192.0.2.1 1 4000\r\n", "bad IPv4 address"),
            ("PROXY TCP6 203.0.113.7 ::1 1 4000\r\n", "bad IPv6 address"),
            ("PROXY TCP4 203.0.113.7  192.0.2.1 1 4000\r\n", "expected TCP4"),
            ("PROXY UDP4 203.0.113.7 192.0.2.1 1 4000\r\n", "unknown protocol"),
            ("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX", "CR without LF"),
            ("PROXY TCP4 1.2.3.4\n", "without CR"),
            ("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\u{1b}\r\n", "not printable"),
        ])
    func v1Malformed(line: String, expected: String) {
        let error = self.error(Array(line.utf8))
        #expect(error?.contains(expected) == true, "\(line.debugDescription): \(error ?? "accepted")")
    }

    @Test("v2 over IPv4 and IPv6, with TLVs skipped, and the bytes after it left alone")
    func v2() throws {
        let ipv4: [UInt8] = [203, 0, 113, 7, 192, 0, 2, 1, 0x15, 0xB3, 0x0F, 0xA0]
        let tlvs: [UInt8] = [0x01, 0x00, 0x02, 0x68, 0x32, 0x04, 0x00, 0x00]  // ALPN "h2", an empty NOOP
        let header = Self.v2(family: 0x11, body: ipv4 + tlvs)
        let parsed = try #require(try self.parse(header + [0x68, 0x69, 0x00]))
        #expect(parsed.length == header.count)
        #expect(
            parsed.header
                == .proxied(
                    source: try self.address("203.0.113.7", 5555), destination: try self.address("192.0.2.1", 4000)))
        var ipv6 = [UInt8](repeating: 0, count: 36)
        ipv6[0] = 0x20
        ipv6[1] = 0x01
        ipv6[15] = 0x09
        ipv6[31] = 0x01
        ipv6[32] = 0x01
        ipv6[33] = 0xBB
        let six = try #require(try self.parse(Self.v2(family: 0x21, body: ipv6)))
        #expect(
            try six.header
                == .proxied(source: try self.address("2001::9", 443), destination: try self.address("::1", 0)))
        for cut in 0..<header.count {
            #expect(try self.parse(Array(header[..<cut])) == nil, "cut at \(cut)")
        }
    }

    @Test("v2 LOCAL is the balancer's own connection; UNSPEC, UDP and Unix keep the socket's address")
    func v2LocalAndUnknown() throws {
        #expect(try self.parse(Self.v2(command: 0, family: 0x00, body: []))?.header == .local)
        #expect(
            try self.parse(Self.v2(command: 0, family: 0x11, body: [UInt8](repeating: 1, count: 12)))?.header == .local)
        #expect(try self.parse(Self.v2(family: 0x00, body: []))?.header == .unknown)
        #expect(try self.parse(Self.v2(family: 0x12, body: [UInt8](repeating: 1, count: 12)))?.header == .unknown)
        #expect(try self.parse(Self.v2(family: 0x31, body: [UInt8](repeating: 0x61, count: 216)))?.header == .unknown)
    }

    @Test("v2: bad version, command, lengths and TLVs are refused")
    func v2Malformed() {
        let ipv4 = [UInt8](repeating: 1, count: 12)
        var badVersion = Self.v2(family: 0x11, body: ipv4)
        badVersion[12] = 0x11
        #expect(self.error(badVersion)?.contains("version") == true)
        #expect(self.error(Self.v2(command: 2, family: 0x11, body: ipv4))?.contains("command") == true)
        #expect(self.error(Self.v2(family: 0x11, body: [1, 2, 3]))?.contains("too short") == true)
        #expect(self.error(Self.v2(family: 0x21, body: ipv4))?.contains("too short") == true)
        #expect(self.error(Self.v2(family: 0x11, body: ipv4 + [0x01, 0x00, 0x05, 0x61]))?.contains("TLV") == true)
        #expect(self.error(Self.v2(family: 0x11, body: ipv4 + [0x01, 0x00]))?.contains("TLV") == true)
        // Refused from the length field alone, before the body is waited for.
        let huge = Self.signature + [0x21, 0x11, 0xFF, 0xFF]
        #expect(self.error(huge)?.contains("more than \(ProxyProtocol.maximumV2Length)") == true)
        #expect(self.error(Array(Self.signature[..<4]) + [0x0A]) != nil, "refused at the first byte that differs")
    }

    @Test("address ranges: CIDR and single addresses, both families, IPv4-mapped IPv6 as IPv4")
    func ranges() throws {
        let ten = try #require(AddressRange("10.0.0.0/8"))
        #expect(ten.contains(self.ip("10.200.3.4", 1)))
        #expect(!ten.contains(self.ip("11.0.0.1", 1)))
        #expect(ten.contains(self.ip("::ffff:10.1.2.3", 1)))
        #expect(!ten.contains(self.ip("::1", 1)))
        let host = try #require(AddressRange("127.0.0.1"))
        #expect(host.contains(self.ip("127.0.0.1", 9)) && !host.contains(self.ip("127.0.0.2", 9)))
        let v6 = try #require(AddressRange("2001:db8::/32"))
        #expect(v6.contains(self.ip("2001:db8:ffff::1", 1)) && !v6.contains(self.ip("2001:db9::1", 1)))
        #expect(AddressRange("10.1.2.3/20")?.description == "10.1.0.0/20")
        #expect(AddressRange("0.0.0.0/0")?.contains(self.ip("8.8.8.8", 1)) == true)
        for bad in ["10.0.0.0/33", "::/129", "example.com", "10.0.0.0/", "10.0.0.0/+8", ""] {
            #expect(AddressRange(bad) == nil, "\(bad)")
        }
    }

    @Test("IPv4-mapped ranges are IPv4 ranges (/96 or narrower); a shorter one is refused, saying why")
    func mappedRanges() throws {
        let one = try #require(AddressRange("::ffff:127.0.0.1"))
        #expect(one.contains(self.ip("127.0.0.1", 1)), "an IPv4 peer, as on a server bound to an IPv4 address")
        #expect(one.contains(self.ip("::ffff:127.0.0.1", 1)), "the same peer on a socket bound to [::]")
        #expect(one.description == "127.0.0.1/32")
        let net = try #require(AddressRange("::ffff:192.0.2.0/120"))
        #expect(net.contains(self.ip("192.0.2.5", 1)) && !net.contains(self.ip("192.0.3.5", 1)))
        #expect(net.description == "192.0.2.0/24")
        #expect(AddressRange("::ffff:0.0.0.0/96")?.contains(self.ip("8.8.8.8", 1)) == true)
        for short in ["::ffff:127.0.0.0/8", "::ffff:0:0/95"] {
            #expect(AddressRange(short) == nil, "\(short)")
            guard case .failure(let error) = AddressRange.parse(short) else { continue }
            #expect("\(error)".contains("IPv4-mapped"), "\(short): \(error)")
        }
    }

    @Test("a range with host bits set is taken as its network, and says so")
    func hostBits() throws {
        #expect(AddressRange("10.0.0.1/24")?.hostBitsSet == true)
        #expect(AddressRange("10.0.0.0/24")?.hostBitsSet == false)
        #expect(AddressRange("10.0.0.1")?.hostBitsSet == false)
    }

    @Test("per-address keys: an IPv4 address and an IPv6 address never share a slot; a mapped address is its IPv4")
    func addressKeys() throws {
        let v4 = AddressKey(self.ip("1.2.3.4", 1))
        #expect(v4 == AddressKey(self.ip("::ffff:1.2.3.4", 2)))
        // ::403:201:ffff:0, read little-endian, was the same 64 bits as 1.2.3.4's key.
        #expect(v4 != AddressKey(self.ip("::403:201:ffff:0", 1)))
        #expect(AddressKey(self.ip("::1", 1)) != AddressKey(self.ip("0.0.0.1", 1)))
        #expect(AddressKey(self.ip("2001:db8::1", 1)) != AddressKey(self.ip("2001:db8::2", 1)))
    }
}
