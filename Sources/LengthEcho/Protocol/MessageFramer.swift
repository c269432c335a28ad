import NIOCore

/// Splits a byte stream into length-echo messages: each message ends with one NUL byte.
///
/// The original C server called `read()` once and trusted it to hold exactly one message. TCP promises no
/// such thing, so this framer keeps state across reads: a message may arrive in any number of pieces, and
/// one read may carry several messages. It never copies: every message it returns is a slice of the buffer
/// it was given.
public struct MessageFramer: Sendable {
    /// The largest message accepted, in bytes, not counting its NUL terminator.
    public let maximumMessageLength: Int

    /// How far past the reader index the current buffer has already been searched for a NUL, so a message
    /// that arrives in many pieces is scanned once in all, not once per piece.
    private var searched = 0

    public init(maximumMessageLength: Int) {
        precondition(maximumMessageLength >= 0, "maximumMessageLength must not be negative")
        self.maximumMessageLength = maximumMessageLength
    }

    /// Returns the next complete message in `buffer` (without its NUL) and moves the reader index past its
    /// NUL, or returns `nil` when `buffer` holds only part of a message.
    ///
    /// - Throws: `LengthEchoError.messageTooLarge` once more than `maximumMessageLength` bytes have arrived
    ///   without a NUL. The buffer is left as it was.
    public mutating func nextMessage(in buffer: inout ByteBuffer) throws(LengthEchoError) -> ByteBuffer? {
        let readable = buffer.readableBytes
        let nulOffset: Int? = buffer.withUnsafeReadableBytes { bytes in
            guard self.searched < bytes.count, let base = bytes.baseAddress else { return nil }
            // Never look further than one byte past the limit: that is where the verdict is known.
            let window = min(bytes.count, self.maximumMessageLength + 1) - self.searched
            guard window > 0 else { return nil }
            guard let hit = memchr(base + self.searched, 0, window) else { return nil }
            return base.distance(to: UnsafeRawPointer(hit))
        }
        guard let length = nulOffset else {
            if readable > self.maximumMessageLength {
                throw .messageTooLarge(limit: self.maximumMessageLength)
            }
            self.searched = readable
            return nil
        }
        self.searched = 0
        // `length` is within the readable bytes, so neither call can fail.
        let message = buffer.readSlice(length: length) ?? ByteBuffer()
        buffer.moveReaderIndex(forwardBy: 1)
        return message
    }

    /// Called when the peer has finished sending: the bytes left over, if any, are one last message that
    /// was never terminated (so `printf hello | nc -N host 4000` is answered).
    public mutating func finalMessage(in buffer: inout ByteBuffer) throws(LengthEchoError) -> ByteBuffer? {
        self.searched = 0
        guard buffer.readableBytes > 0 else { return nil }
        if buffer.readableBytes > self.maximumMessageLength {
            throw .messageTooLarge(limit: self.maximumMessageLength)
        }
        return buffer.readSlice(length: buffer.readableBytes)
    }

    /// Forgets how far the current buffer was searched; call it when the buffer is replaced.
    public mutating func reset() {
        self.searched = 0
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
