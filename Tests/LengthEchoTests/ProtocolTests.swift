import LengthEcho
import NIOCore
import Testing

@Suite("Framing and encoding", .timeLimit(.minutes(1)))
struct ProtocolTests {
    private func frame(_ pieces: [[UInt8]], limit: Int = 1 << 20) throws -> [[UInt8]] {
        var framer = MessageFramer(maximumMessageLength: limit)
        var messages: [[UInt8]] = []
        for piece in pieces {
            framer.append(ByteBuffer(bytes: piece))
            while let message = try framer.next() {
                messages.append(Array(message.readableBytesView))
            }
        }
        #expect(framer.bufferedBytes == 0, "bytes left unframed")
        return messages
    }

    @Test("every way of splitting a stream in three yields the same messages")
    func everySplitPoint() throws {
        let stream: [UInt8] = bytes("test_string\0\0안녕\0") + [0xFF, 0x01, 0x80] + bytes("\0tail\0")
        let expected: [[UInt8]] = [bytes("test_string"), [], bytes("안녕"), [0xFF, 0x01, 0x80], bytes("tail")]
        for first in 0...stream.count {
            for second in first...stream.count {
                let pieces = [Array(stream[..<first]), Array(stream[first..<second]), Array(stream[second...])]
                #expect(try self.frame(pieces) == expected, "split at \(first), \(second)")
            }
        }
    }

    @Test("several messages in one buffer, and a partial one kept for later")
    func severalInOneBuffer() throws {
        var framer = MessageFramer(maximumMessageLength: 100)
        framer.append(ByteBuffer(bytes: bytes("a\0bb\0ccc")))
        #expect(try framer.next().map { Array($0.readableBytesView) } == bytes("a"))
        #expect(try framer.next().map { Array($0.readableBytesView) } == bytes("bb"))
        #expect(try framer.next() == nil)
        framer.append(ByteBuffer(bytes: [0]))
        #expect(try framer.next().map { Array($0.readableBytesView) } == bytes("ccc"))
    }

    @Test("an empty message is a message")
    func emptyMessage() throws {
        #expect(try self.frame([[0]]) == [[]])
    }

    @Test("exactly the limit is accepted; one byte over is refused, with or without its NUL")
    func limit() throws {
        let atLimit = [UInt8](repeating: 0x61, count: 1024)
        #expect(try self.frame([atLimit + [0]], limit: 1024) == [atLimit])
        #expect(try self.frame([atLimit, [0]], limit: 1024) == [atLimit])

        var framer = MessageFramer(maximumMessageLength: 1024)
        framer.append(ByteBuffer(bytes: atLimit + [0x61, 0]))
        #expect(throws: LengthEchoError.messageTooLarge(limit: 1024)) { try framer.next() }

        var framer2 = MessageFramer(maximumMessageLength: 1024)
        framer2.append(ByteBuffer(bytes: atLimit))
        #expect(try framer2.next() == nil)
        framer2.append(ByteBuffer(bytes: [0x61]))
        #expect(throws: LengthEchoError.messageTooLarge(limit: 1024)) { try framer2.next() }
    }

    @Test("bytes left when the peer half-closes are a final message")
    func finalMessage() throws {
        var framer = MessageFramer(maximumMessageLength: 10)
        framer.append(ByteBuffer(bytes: bytes("hello")))
        #expect(try framer.next() == nil)
        #expect(try framer.finish().map { Array($0.readableBytesView) } == bytes("hello"))
        #expect(try framer.finish() == nil)
    }

    @Test("replies are the byte length, ' : ', the message and a NUL")
    func replyEncoding() {
        func encode(_ message: [UInt8]) -> [UInt8] {
            var out = ByteBuffer()
            Reply.write(echoOf: ByteBuffer(bytes: message), into: &out)
            #expect(out.readableBytes == Reply.encodedLength(ofMessageLength: message.count))
            return Array(out.readableBytesView)
        }
        #expect(encode(bytes("test_string")) == bytes("11 : test_string\0"))
        #expect(encode(bytes("안녕")) == bytes("6 : 안녕\0"))
        #expect(encode([]) == bytes("0 : \0"))
        #expect(encode([0xFF]) == bytes("1 : ") + [0xFF, 0])
        #expect(encode([UInt8](repeating: 0x62, count: 1000)).prefix(7) == ArraySlice(bytes("1000 : ")))
    }

    @Test("error replies never start with a digit and stay one line, one frame")
    func errorEncoding() {
        var out = ByteBuffer()
        Reply.write(error: "bad\nthing\0here", into: &out)
        #expect(Array(out.readableBytesView) == bytes("error: bad thing here\0"))
    }

    @Test("replies parse, and bad ones say why")
    func parsing() throws {
        #expect(try ParsedReply(bytes: bytes("11 : test_string")) == .echo(length: 11, message: bytes("test_string")))
        #expect(try ParsedReply(bytes: bytes("0 : ")) == .echo(length: 0, message: []))
        #expect(try ParsedReply(bytes: bytes("error: busy")) == .error("busy"))
        #expect(throws: LengthEchoError.self) { try ParsedReply(bytes: bytes("12 : test_string")) }
        #expect(throws: LengthEchoError.self) { try ParsedReply(bytes: bytes("HTTP/1.1 400")) }
        #expect(throws: LengthEchoError.self) { try ParsedReply(bytes: bytes("11 - test_string")) }
        #expect(throws: LengthEchoError.self) { try ParsedReply(bytes: bytes("99999999999999999999999 : ")) }
    }

    @Test("printing escapes what could forge log lines or drive a terminal")
    func escaping() {
        #expect(Escaping.printable(bytes("test_string")) == "test_string")
        #expect(Escaping.printable(bytes("안녕")) == "안녕")
        #expect(Escaping.printable(bytes("a\nreceive: forged")) == "a\\nreceive: forged")
        #expect(Escaping.printable(bytes("\u{1B}[2J")) == "\\x1b[2J")
        #expect(Escaping.printable([0xC2, 0x9B]) == "\\u{9b}")
        #expect(Escaping.printable([0xFF, 0x41]) == "\\xffA")
        #expect(Escaping.printable(bytes("back\\slash")) == "back\\\\slash")
    }
}
