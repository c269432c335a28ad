import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Splits a byte stream into length-echo messages, each ended by its framing's terminator (one NUL byte, or
/// a newline with an optional `\r` before it).
///
/// The original C server called `read()` once and trusted it to hold exactly one message. TCP promises no
/// such thing, so the framer keeps what has arrived across reads: a message may come in any number of
/// pieces, and one read may carry several messages. It never copies a read that starts a message: the
/// messages it returns are slices of the buffers it was given, and only the pieces of a message split
/// across reads are joined.
package struct MessageFramer: Sendable {
    /// The largest message accepted, in bytes, not counting its terminator.
    package let maximumMessageLength: Int
    /// What ends a message.
    package let framing: Framing

    /// Bytes received and not yet returned as a message. Empty between messages, so an idle connection
    /// holds no read buffer.
    private var buffer: ByteBuffer
    private let empty: ByteBuffer
    /// How far past the reader index `buffer` has been searched for a terminator, so a message that arrives in
    /// many pieces is scanned once in all, not once per piece.
    private var searched = 0

    /// - Parameter empty: an empty buffer to hold between messages (share one to save an allocation).
    package init(framing: Framing = .nul, maximumMessageLength: Int, empty: ByteBuffer = ByteBuffer()) {
        precondition(maximumMessageLength >= 0, "maximumMessageLength must not be negative")
        self.framing = framing
        self.maximumMessageLength = maximumMessageLength
        self.empty = empty
        self.buffer = empty
    }

    /// The bytes received that are not yet part of a returned message.
    package var bufferedBytes: Int { self.buffer.readableBytes }

    /// Adds what a read returned. Between messages the bytes are adopted as they are, without a copy.
    package mutating func append(_ bytes: ByteBuffer) {
        if self.buffer.readableBytes == 0 {
            self.buffer = bytes
            self.searched = 0
        } else {
            var bytes = bytes
            self.buffer.writeBuffer(&bytes)
        }
    }

    /// The next complete message (without its terminator), or `nil` until one has fully arrived.
    ///
    /// - Throws: `LengthEchoError.messageTooLarge` once more than `maximumMessageLength` bytes have arrived
    ///   without a terminator. What was buffered is left as it was.
    package mutating func next() throws(LengthEchoError) -> ByteBuffer? {
        let readable = self.buffer.readableBytes
        let searched = self.searched
        let limit = self.maximumMessageLength
        let terminator = Int32(self.framing.terminator)
        // Never look further than where the verdict is known: one byte past the limit (two in line mode,
        // where a `\r` may stand between a message of the largest size and its newline).
        let extra = self.framing.stripsCarriageReturn ? 2 : 1
        let horizon = limit > Int.max - extra ? Int.max : limit + extra
        let terminatorOffset: Int? = self.buffer.withUnsafeReadableBytes { bytes in
            guard searched < bytes.count, let base = bytes.baseAddress else { return nil }
            let window = min(bytes.count, horizon) - searched
            guard window > 0, let hit = memchr(base + searched, terminator, window) else { return nil }
            return base.distance(to: UnsafeRawPointer(hit))
        }
        guard let offset = terminatorOffset else {
            if readable > limit
                && !(self.framing.stripsCarriageReturn && readable == limit + 1 && self.endsWithCarriageReturn)
            {
                throw .messageTooLarge(limit: limit)
            }
            self.searched = readable
            return nil
        }
        self.searched = 0
        var length = offset
        if self.framing.stripsCarriageReturn, length > 0,
            self.buffer.getInteger(at: self.buffer.readerIndex + length - 1, as: UInt8.self) == Self.carriageReturn
        {
            length -= 1
        }
        if length > limit {
            throw .messageTooLarge(limit: limit)
        }
        // `offset` is within the readable bytes, so neither call can fail.
        let message = self.buffer.readSlice(length: length) ?? self.empty
        self.buffer.moveReaderIndex(forwardBy: offset - length + 1)
        if self.buffer.readableBytes == 0 {
            self.buffer = self.empty  // let the read buffer go
        }
        return message
    }

    private static let carriageReturn: UInt8 = 0x0D

    private var endsWithCarriageReturn: Bool {
        self.buffer.readableBytes > 0
            && self.buffer.getInteger(at: self.buffer.writerIndex - 1, as: UInt8.self) == Self.carriageReturn
    }

    /// Called when the peer has finished sending: the bytes left over, if any, are one last message that
    /// was never terminated (so `printf hello | nc -N host 4000` is answered).
    package mutating func finish() throws(LengthEchoError) -> ByteBuffer? {
        self.searched = 0
        guard self.buffer.readableBytes > 0 else { return nil }
        var message = self.buffer
        if self.framing.stripsCarriageReturn, self.endsWithCarriageReturn {
            message.moveWriterIndex(to: message.writerIndex - 1)
        }
        if message.readableBytes > self.maximumMessageLength {
            throw .messageTooLarge(limit: self.maximumMessageLength)
        }
        self.buffer = self.empty
        return message
    }

    /// Forgets whatever was buffered (after an error, or when the connection ends).
    package mutating func discard() {
        self.buffer = self.empty
        self.searched = 0
    }
}
