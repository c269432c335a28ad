import NIOCore

/// How messages and replies are delimited on the wire.
///
/// `nul` is the original protocol: every message and every reply ends with one NUL byte, byte-compatible
/// with the C programs of the tutorial. `line` ends each with a newline, so a person can type at the
/// server with `nc`, `telnet` or `openssl s_client`; a request line may end with `\r\n`, and the `\r` is not
/// part of the message. A message that contains the other mode's terminator is just bytes.
public enum Framing: String, Sendable, CaseIterable {
    case nul
    case line

    /// The byte that ends every message and every reply.
    @inlinable
    public var terminator: UInt8 {
        switch self {
        case .nul: 0
        case .line: 0x0A
        }
    }

    /// Whether a `\r` right before the terminator belongs to the terminator rather than to the message.
    @inlinable
    public var stripsCarriageReturn: Bool { self == .line }

    /// What the terminator is called in error messages.
    public var terminatorName: String {
        switch self {
        case .nul: "NUL byte"
        case .line: "newline"
        }
    }

    /// Appends `message` and the terminator to `buffer`: one request as a client sends it.
    package func writeRequest(_ message: some Collection<UInt8>, into buffer: inout ByteBuffer) {
        buffer.writeBytes(message)
        buffer.writeInteger(self.terminator)
    }

    /// Why `message` cannot be sent intact in this framing, or nil when it can.
    package func problem(sending message: some BidirectionalCollection<UInt8>) -> LengthEchoError? {
        if message.contains(self.terminator) { return .messageContainsTerminator(self) }
        if self.stripsCarriageReturn, message.last == 0x0D { return .messageEndsWithCarriageReturn }
        return nil
    }
}
