import NIOCore

/// A buffer reused by every connection of one event loop, so a message costs no allocation on the hot path.
///
/// `take` hands out the buffer, cleared; whoever took it gives it back after passing it on. If the buffer
/// is still referenced when it is taken again (a write not yet on the wire, a partial message kept by the
/// next handler), clearing it allocates fresh storage, so sharing is always safe: reuse is only an
/// optimisation. Being per loop, it costs nothing per idle connection.
package final class ScratchBuffer {
    private var buffer: ByteBuffer
    private let empty: ByteBuffer
    private let retainLimit: Int

    package init(allocator: ByteBufferAllocator, retainLimit: Int = 64 * 1024) {
        self.empty = allocator.buffer(capacity: 0)
        self.buffer = self.empty
        self.retainLimit = retainLimit
    }

    /// An empty buffer with room for at least `capacity` bytes.
    package func take(capacity: Int) -> ByteBuffer {
        var buffer = self.buffer
        self.buffer = self.empty
        buffer.clear(minimumCapacity: capacity)
        return buffer
    }

    /// Keeps `buffer` for the next `take`, unless it grew too large to keep around.
    package func giveBack(_ buffer: ByteBuffer) {
        if buffer.capacity <= self.retainLimit {
            self.buffer = buffer
        }
    }
}

/// The scratch buffers of one event loop: TLS plaintext in, TLS ciphertext out, and protocol replies.
/// Kept here, below both the TLS layer and the protocol, so that neither has to know about the other.
package final class LoopBuffers {
    package let plaintext: ScratchBuffer
    package let ciphertext: ScratchBuffer
    package let replies: ScratchBuffer
    /// An empty buffer to share, so a connection's empty buffers cost no allocation each.
    package let empty: ByteBuffer

    package init(allocator: ByteBufferAllocator = ByteBufferAllocator()) {
        self.empty = allocator.buffer(capacity: 0)
        self.plaintext = ScratchBuffer(allocator: allocator)
        self.ciphertext = ScratchBuffer(allocator: allocator)
        self.replies = ScratchBuffer(allocator: allocator)
    }
}
