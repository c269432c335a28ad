import LengthEchoCore
import NIOCore
import Testing

@Suite("Framing and encoding", .timeLimit(.minutes(1)))
struct ProtocolTests {
    private func frame(_ pieces: [[UInt8]], framing: Framing = .nul, limit: Int = 1 << 20) throws -> [[UInt8]] {
        var framer = MessageFramer(framing: framing, maximumMessageLength: limit)
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
            Reply.write(echoOf: ByteBuffer(bytes: message), framing: .nul, into: &out)
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
        Reply.write(error: "bad\nthing\0here", framing: .nul, into: &out)
        #expect(Array(out.readableBytesView) == bytes("error: bad thing here\0"))
    }

    @Test("replies parse, and bad ones say why")
    func parsing() throws {
        #expect(try ParsedReply(bytes: bytes("11 : test_string")) == .echo(length: 11, message: bytes("test_string")))
        #expect(try ParsedReply(bytes: bytes("0 : ")) == .echo(length: 0, message: []))
        #expect(try ParsedReply(bytes: bytes("error: busy")) == .error("busy"))
        #expect(throws: LengthEchoError.invalidReply("12 : test_string", reason: "it states 12 bytes but carries 11")) {
            try ParsedReply(bytes: bytes("12 : test_string"))
        }
        #expect(throws: LengthEchoError.invalidReply("HTTP/1.1 400", reason: "it does not start with a length")) {
            try ParsedReply(bytes: bytes("HTTP/1.1 400"))
        }
        #expect(throws: LengthEchoError.invalidReply("11 - test_string", reason: "no ' : ' after the length")) {
            try ParsedReply(bytes: bytes("11 - test_string"))
        }
        #expect(throws: LengthEchoError.invalidReply("99999999999999999999999 : ", reason: "length too large")) {
            try ParsedReply(bytes: bytes("99999999999999999999999 : "))
        }
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

    // MARK: line framing

    @Test("line framing: every split of a stream with \\n and \\r\\n endings yields the same messages")
    func lineEverySplitPoint() throws {
        let stream: [UInt8] = bytes("hello\r\n\nnul\0inside\n안녕\r\n") + [0xFF, 0x0D, 0x41] + bytes("\n")
        let expected: [[UInt8]] = [bytes("hello"), [], bytes("nul\0inside"), bytes("안녕"), [0xFF, 0x0D, 0x41]]
        for first in 0...stream.count {
            for second in first...stream.count {
                let pieces = [Array(stream[..<first]), Array(stream[first..<second]), Array(stream[second...])]
                #expect(try self.frame(pieces, framing: .line) == expected, "split at \(first), \(second)")
            }
        }
    }

    @Test("NUL framing keeps \\n and \\r as message bytes")
    func nulKeepsNewlines() throws {
        #expect(try self.frame([bytes("a\r\nb\0")]) == [bytes("a\r\nb")])
    }

    @Test("line framing: the limit counts the message, not its \\r\\n")
    func lineLimit() throws {
        let atLimit = [UInt8](repeating: 0x61, count: 16)
        #expect(try self.frame([atLimit + bytes("\r\n")], framing: .line, limit: 16) == [atLimit])
        #expect(try self.frame([atLimit + bytes("\r"), bytes("\n")], framing: .line, limit: 16) == [atLimit])
        #expect(try self.frame([atLimit, bytes("\r"), bytes("\n")], framing: .line, limit: 16) == [atLimit])

        var over = MessageFramer(framing: .line, maximumMessageLength: 16)
        over.append(ByteBuffer(bytes: atLimit + bytes("a\n")))
        #expect(throws: LengthEchoError.messageTooLarge(limit: 16)) { try over.next() }

        var trickle = MessageFramer(framing: .line, maximumMessageLength: 16)
        trickle.append(ByteBuffer(bytes: atLimit + bytes("\r")))
        #expect(try trickle.next() == nil)
        trickle.append(ByteBuffer(bytes: bytes("x")))
        #expect(throws: LengthEchoError.messageTooLarge(limit: 16)) { try trickle.next() }
    }

    @Test("line framing: a final unterminated line loses a trailing \\r")
    func lineFinalMessage() throws {
        var framer = MessageFramer(framing: .line, maximumMessageLength: 10)
        framer.append(ByteBuffer(bytes: bytes("bye\r")))
        #expect(try framer.next() == nil)
        #expect(try framer.finish().map { Array($0.readableBytesView) } == bytes("bye"))
    }

    @Test("line framing: replies and errors end with a newline, and errors stay one line")
    func lineEncoding() {
        var out = ByteBuffer()
        Reply.write(echoOf: ByteBuffer(bytes: bytes("hello")), framing: .line, into: &out)
        #expect(Array(out.readableBytesView) == bytes("5 : hello\n"))
        #expect(Array(Reply.error("bad\nthing", framing: .line).readableBytesView) == bytes("error: bad thing\n"))
    }

    @Test("what a client cannot send intact in each framing")
    func sendingProblems() {
        #expect(Framing.nul.problem(sending: bytes("a\0b")) == .messageContainsTerminator(.nul))
        #expect(Framing.nul.problem(sending: bytes("a\nb\r")) == nil)
        #expect(Framing.line.problem(sending: bytes("a\nb")) == .messageContainsTerminator(.line))
        #expect(Framing.line.problem(sending: bytes("a\r")) == .messageEndsWithCarriageReturn)
        #expect(Framing.line.problem(sending: bytes("a\0\rb")) == nil)
    }

    @Test("the log budget lets a few lines a second through and reports how many it held back")
    func logBudget() {
        let budget = LogBudget(perSecond: 3)
        let start = NIODeadline.uptimeNanoseconds(5_000_000_000)
        var reported: [Int] = []
        let allowed = (0..<10).filter { _ in budget.allow(now: start) { reported.append($0) } }.count
        #expect(allowed == 3)
        #expect(reported.isEmpty)
        #expect(budget.allow(now: start + .milliseconds(1_001)) { reported.append($0) })
        #expect(reported == [7])
    }

    @Test("a server's error text is escaped before it can reach a terminal")
    func serverErrorEscaped() {
        let error = LengthEchoError.serverError("busy\u{1B}[2J\nreceive: forged")
        #expect(error.description == "the server refused the message: busy\\x1b[2J\\nreceive: forged")
    }

    @Test("library errors state what happened, never a command-line flag")
    func errorsNameNoFlags() {
        let errors: [LengthEchoError] = [
            .replyTimeout(seconds: 3), .connectTimeout(host: "h", port: 1, seconds: 2),
            .connectionRefused(host: "h", port: 1), .bindFailed(host: "h", port: 1, reason: .addressInUse),
            .bindFailed(host: "h", port: 1, reason: .noSuchAddress), .messageContainsTerminator(.line),
        ]
        for error in errors {
            #expect(!error.description.contains("--"), "\(error)")
        }
    }
}

private func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }
