import NIOCore

/// The server's side of the wire format: `<length> : <message>` and the framing's terminator (NUL, or a
/// newline), where `<length>` is the message's size in bytes in ASCII decimal (C's `strlen`), or
/// `error: <reason>` when the server refuses a message. An error never starts with a digit, so a client can
/// always tell it from a reply.
package enum Reply {
    /// The separator between the length and the echoed message.
    package static let separator: StaticString = " : "
    /// Every error reply starts with this.
    package static let errorPrefix: StaticString = "error: "

    /// The number of bytes `write(echoOf:into:)` appends for a message of `length` bytes.
    @inlinable
    package static func encodedLength(ofMessageLength length: Int) -> Int {
        decimalDigits(length) + 3 + length + 1
    }

    /// Appends the reply to `message` to `buffer`: `<length> : <message>` and the terminator. One
    /// reservation, no intermediate strings.
    @inlinable
    package static func write(echoOf message: ByteBuffer, framing: Framing, into buffer: inout ByteBuffer) {
        let length = message.readableBytes
        buffer.reserveCapacity(minimumWritableBytes: encodedLength(ofMessageLength: length))
        writeDecimal(length, into: &buffer)
        buffer.writeStaticString(separator)
        var message = message
        buffer.writeBuffer(&message)
        buffer.writeInteger(framing.terminator)
    }

    /// Appends only the head of a reply, `<length> : `: the message and the terminator follow separately
    /// (so a large message can be written without being copied).
    @inlinable
    package static func writeHeader(ofMessageLength length: Int, into buffer: inout ByteBuffer) {
        writeDecimal(length, into: &buffer)
        buffer.writeStaticString(separator)
    }

    /// Appends an error reply: `error: <reason>` and the terminator. Control bytes (NUL and newline among
    /// them) in `reason` are replaced so the reply stays one line and one frame in either framing.
    package static func write(error reason: String, framing: Framing, into buffer: inout ByteBuffer) {
        buffer.writeStaticString(errorPrefix)
        for byte in reason.utf8 {
            buffer.writeInteger(byte < 0x20 || byte == 0x7F ? UInt8(ascii: " ") : byte)
        }
        buffer.writeInteger(framing.terminator)
    }

    /// An error reply on its own, as a buffer: for a refusal written before any connection state exists.
    package static func error(_ reason: String, framing: Framing) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.reserveCapacity(reason.utf8.count + 8)
        Self.write(error: reason, framing: framing, into: &buffer)
        return buffer
    }

    @inlinable
    static func decimalDigits(_ value: Int) -> Int {
        var digits = 1
        var rest = value / 10
        while rest > 0 {
            digits += 1
            rest /= 10
        }
        return digits
    }

    @inlinable
    static func writeDecimal(_ value: Int, into buffer: inout ByteBuffer) {
        precondition(value >= 0)
        let digits = decimalDigits(value)
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: digits) { out in
            var rest = value
            for index in stride(from: digits - 1, through: 0, by: -1) {
                out[index] = UInt8(ascii: "0") + UInt8(truncatingIfNeeded: rest % 10)
                rest /= 10
            }
            return digits
        }
    }
}

/// A reply as the client sees it, parsed from the bytes before its terminator.
package enum ParsedReply: Equatable, Sendable {
    /// `<length> : <message>`, with the length checked against the message.
    case echo(length: Int, message: [UInt8])
    /// `error: <reason>` from the server.
    case error(String)

    /// Parses the bytes of one reply, without its terminator.
    ///
    /// - Throws: `LengthEchoError.invalidReply` when the bytes are neither form, or the stated length is
    ///   not the length of the message that follows it.
    package init(bytes: some Collection<UInt8>) throws(LengthEchoError) {
        let bytes = Array(bytes)
        if bytes.starts(with: "error: ".utf8) {
            self = .error(String(decoding: bytes.dropFirst(7), as: UTF8.self))
            return
        }
        var index = 0
        var length = 0
        while index < bytes.count, bytes[index] >= UInt8(ascii: "0"), bytes[index] <= UInt8(ascii: "9") {
            let (scaled, overflow1) = length.multipliedReportingOverflow(by: 10)
            let (next, overflow2) = scaled.addingReportingOverflow(Int(bytes[index] - UInt8(ascii: "0")))
            if overflow1 || overflow2 { throw .invalidReply(Self.describe(bytes), reason: "length too large") }
            length = next
            index += 1
        }
        guard index > 0 else {
            throw .invalidReply(Self.describe(bytes), reason: "it does not start with a length")
        }
        guard bytes[index...].starts(with: " : ".utf8) else {
            throw .invalidReply(Self.describe(bytes), reason: "no ' : ' after the length")
        }
        let message = Array(bytes[(index + 3)...])
        guard message.count == length else {
            throw .invalidReply(
                Self.describe(bytes),
                reason: "it states \(length) bytes but carries \(message.count)"
            )
        }
        self = .echo(length: length, message: message)
    }

    /// A short, printable rendering of bad reply bytes for an error message.
    package static func describe(_ bytes: [UInt8]) -> String {
        let shown = bytes.prefix(60)
        let text = Escaping.printable(Array(shown))
        return bytes.count > shown.count ? text + "..." : text
    }
}
