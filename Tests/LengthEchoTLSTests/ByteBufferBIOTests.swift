import COpenSSL
import NIOCore
import Testing

@testable import LengthEchoTLS

/// The BIO OpenSSL reads ciphertext from and writes it to, driven through OpenSSL's own BIO calls.
@Suite("The ByteBuffer BIO", .timeLimit(.minutes(1)))
struct ByteBufferBIOTests {
    /// A BIO over `io`, freed at the end of `body` (the test owns it, as an `SSL` would).
    private func withBIO(_ io: ByteBufferBIO, _ body: (OpaquePointer) throws -> Void) throws {
        let bio = try #require(io.makeBIO())
        defer { BIO_free(bio) }
        try body(bio)
    }

    @Test("reads hand over what was fed, in order, across buffers; an empty BIO says retry, never EOF")
    func reads() throws {
        let io = ByteBufferBIO()
        try self.withBIO(io) { bio in
            var out = [UInt8](repeating: 0, count: 8)
            #expect(BIO_read(bio, &out, 8) == -1)
            #expect(
                BIO_test_flags(bio, BIO_FLAGS_SHOULD_RETRY | BIO_FLAGS_READ) == BIO_FLAGS_SHOULD_RETRY | BIO_FLAGS_READ,
                "empty means try again later")
            #expect(BIO_ctrl_pending(bio) == 0)

            io.feed(ByteBuffer(string: "hello"))
            io.feed(ByteBuffer(string: " world"))
            #expect(BIO_ctrl_pending(bio) == 11)
            #expect(BIO_read(bio, &out, 8) == 8)
            #expect(out == Array("hello wo".utf8))
            #expect(BIO_test_flags(bio, BIO_FLAGS_SHOULD_RETRY) == 0)
            #expect(BIO_read(bio, &out, 8) == 3)
            #expect(Array(out.prefix(3)) == Array("rld".utf8))
            #expect(BIO_read(bio, &out, 8) == -1)
        }
    }

    @Test("a buffer fed while nothing is pending is adopted without a copy, and let go once read")
    func adoptsWithoutCopy() throws {
        let io = ByteBufferBIO()
        let received = ByteBuffer(string: "ciphertext")
        io.feed(received)
        let same = io.inbound.withUnsafeReadableBytes { a in
            received.withUnsafeReadableBytes { b in a.baseAddress == b.baseAddress }
        }
        #expect(same)
        try self.withBIO(io) { bio in
            var out = [UInt8](repeating: 0, count: 16)
            #expect(BIO_read(bio, &out, 16) == 10)
        }
        io.shrink()
        #expect(io.inbound.capacity == 0, "the socket's read buffer is not held past the read")
    }

    @Test("a record cut at the end of a read is carried in a copy: the read buffer is let go, the bytes stay first")
    func carriesTheCutRecord() throws {
        let io = ByteBufferBIO()
        try self.withBIO(io) { bio in
            var out = [UInt8](repeating: 0, count: 16)
            io.feed(ByteBuffer(string: "abcdef"))
            #expect(BIO_read(bio, &out, 4) == 4)
            io.shrink()  // the end of the read
            #expect(io.inbound.capacity == 0, "the socket's read buffer is not held past the read")
            #expect(BIO_ctrl_pending(bio) == 2)
            let next = ByteBuffer(string: "ghi")
            io.feed(next)
            let adopted = io.inbound.withUnsafeReadableBytes { a in
                next.withUnsafeReadableBytes { b in a.baseAddress == b.baseAddress }
            }
            #expect(adopted, "the next read is adopted, not appended to what was carried")
            #expect(BIO_ctrl_pending(bio) == 5)
            #expect(BIO_read(bio, &out, 16) == 5)
            #expect(Array(out.prefix(5)) == Array("efghi".utf8))
            io.shrink()
            #expect(BIO_ctrl_pending(bio) == 0)
        }
    }

    @Test("writes land in the outbound buffer, which is taken whole")
    func writes() throws {
        let io = ByteBufferBIO()
        try self.withBIO(io) { bio in
            #expect(BIO_write(bio, "abc", 3) == 3)
            #expect(BIO_write(bio, "de", 2) == 2)
            #expect(BIO_ctrl_wpending(bio) == 5)
            #expect(BIO_ctrl(bio, BIO_CTRL_FLUSH, 0, nil) == 1)
        }
        let out = io.takeOutbound()
        #expect(String(buffer: out) == "abcde")
        #expect(io.outbound.readableBytes == 0)
    }
}
