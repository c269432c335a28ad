#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import NIOCore

/// Splits a byte stream into length-echo messages: each message ends with one NUL byte.
///
/// The original C server called `read()` once and trusted it to hold exactly one message. TCP promises no
/// such thing, so the framer keeps what has arrived across reads: a message may come in any number of
/// pieces, and one read may carry several messages. It never copies a read that starts a message: the
/// messages it returns are slices of the buffers it was given, and only the pieces of a message split
/// across reads are joined.
public struct MessageFramer: Sendable {
    /// The largest message accepted, in bytes, not counting its NUL terminator.
    public let maximumMessageLength: Int

    /// Bytes received and not yet returned as a message. Empty between messages, so an idle connection
    /// holds no read buffer.
    private var buffer: ByteBuffer
    private let empty: ByteBuffer
    /// How far past the reader index `buffer` has been searched for a NUL, so a message that arrives in
    /// many pieces is scanned once in all, not once per piece.
    private var searched = 0

    /// - Parameter empty: an empty buffer to hold between messages (share one to save an allocation).
    public init(maximumMessageLength: Int, empty: ByteBuffer = ByteBuffer()) {
        precondition(maximumMessageLength >= 0, "maximumMessageLength must not be negative")
        self.maximumMessageLength = maximumMessageLength
        self.empty = empty
        self.buffer = empty
    }

    /// The bytes received that are not yet part of a returned message.
    public var bufferedBytes: Int { self.buffer.readableBytes }

    /// Adds what a read returned. Between messages the bytes are adopted as they are, without a copy.
    public mutating func append(_ bytes: ByteBuffer) {
        if self.buffer.readableBytes == 0 {
            self.buffer = bytes
            self.searched = 0
        } else {
            var bytes = bytes
            self.buffer.writeBuffer(&bytes)
        }
    }

    /// The next complete message (without its NUL), or `nil` until one has fully arrived.
    ///
    /// - Throws: `LengthEchoError.messageTooLarge` once more than `maximumMessageLength` bytes have arrived
    ///   without a NUL. What was buffered is left as it was.
    public mutating func next() throws(LengthEchoError) -> ByteBuffer? {
        let readable = self.buffer.readableBytes
        let searched = self.searched
        let limit = self.maximumMessageLength
        let nulOffset: Int? = self.buffer.withUnsafeReadableBytes { bytes in
            guard searched < bytes.count, let base = bytes.baseAddress else { return nil }
            // Never look further than one byte past the limit: that is where the verdict is known.
            let window = min(bytes.count, limit + 1) - searched
            guard window > 0, let hit = memchr(base + searched, 0, window) else { return nil }
            return base.distance(to: UnsafeRawPointer(hit))
        }
        guard let length = nulOffset else {
            if readable > limit {
                throw .messageTooLarge(limit: limit)
            }
            self.searched = readable
            return nil
        }
        self.searched = 0
        // `length` is within the readable bytes, so neither call can fail.
        let message = self.buffer.readSlice(length: length) ?? self.empty
        self.buffer.moveReaderIndex(forwardBy: 1)
        if self.buffer.readableBytes == 0 {
            self.buffer = self.empty  // let the read buffer go
        }
        return message
    }

    /// Called when the peer has finished sending: the bytes left over, if any, are one last message that
    /// was never terminated (so `printf hello | nc -N host 4000` is answered).
    public mutating func finish() throws(LengthEchoError) -> ByteBuffer? {
        self.searched = 0
        guard self.buffer.readableBytes > 0 else { return nil }
        if self.buffer.readableBytes > self.maximumMessageLength {
            throw .messageTooLarge(limit: self.maximumMessageLength)
        }
        let message = self.buffer
        self.buffer = self.empty
        return message
    }

    /// Forgets whatever was buffered (after an error, or when the connection ends).
    public mutating func discard() {
        self.buffer = self.empty
        self.searched = 0
    }
}
