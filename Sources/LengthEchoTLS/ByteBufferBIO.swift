internal import COpenSSL
import NIOCore

/// The ciphertext on either side of an `SSL`, as `ByteBuffer`s: what arrived from the socket and is not yet
/// read by OpenSSL, and what OpenSSL wrote for the socket and is not yet sent.
///
/// A custom BIO reads and writes these directly. Compared with OpenSSL's memory BIOs it saves a copy each way
/// (a received buffer is handed to OpenSSL as it is, and what OpenSSL writes is sent as it is) and the zeroing
/// of every buffer the memory BIO grows (`BUF_MEM_grow_clean`), which showed up at 6% of a 64 KiB echo.
final class ByteBufferBIO {
    /// What the current read brought (the socket's read buffer itself), read after `carried`.
    var inbound: ByteBuffer
    /// Our own copy of the bytes a read left unread (a record cut at the end of the read), read first.
    private var carried: ByteBuffer
    var outbound: ByteBuffer
    private let empty: ByteBuffer

    init() {
        self.empty = ByteBufferAllocator().buffer(capacity: 0)
        self.inbound = self.empty
        self.carried = self.empty
        self.outbound = self.empty
    }

    /// Received bytes not yet read by OpenSSL.
    var inputPending: Int { self.carried.readableBytes + self.inbound.readableBytes }

    /// Hands received bytes to OpenSSL, without a copy.
    func feed(_ bytes: ByteBuffer) {
        if self.inbound.readableBytes == 0 {
            self.inbound = bytes
        } else {
            var bytes = bytes
            self.inbound.writeBuffer(&bytes)  // twice in one read: not how TLSConnection feeds it
        }
    }

    /// Takes what OpenSSL wrote.
    func takeOutbound() -> ByteBuffer {
        let out = self.outbound
        self.outbound = self.empty
        return out
    }

    /// Lets go of the received buffer at the end of a read (it is the socket's read buffer, which NIO reuses
    /// only when nobody else holds it): what OpenSSL left of it, at most the start of one record, is copied
    /// to `carried`. Rather than appending the next read to this buffer, which copied all of every read that
    /// followed a cut record (most of them, with 64 KiB messages). Empty buffers are let go of too.
    func shrink() {
        if self.inbound.readableBytes > 0 {
            self.carried.writeBuffer(&self.inbound)
        }
        self.inbound = self.empty
        if self.carried.readableBytes == 0 && self.carried.capacity > 0 { self.carried = self.empty }
        if self.outbound.readableBytes == 0 && self.outbound.capacity > 0 { self.outbound = self.empty }
    }

    /// Copies up to `count` received bytes to `destination` for OpenSSL: those carried over first.
    fileprivate func read(into destination: UnsafeMutableRawPointer, count: Int) -> Int {
        var copied = 0
        if self.carried.readableBytes > 0 {
            copied = Self.take(from: &self.carried, into: destination, count: count)
        }
        if copied < count && self.inbound.readableBytes > 0 {
            copied += Self.take(from: &self.inbound, into: destination + copied, count: count - copied)
        }
        return copied
    }

    private static func take(
        from buffer: inout ByteBuffer, into destination: UnsafeMutableRawPointer, count: Int
    )
        -> Int
    {
        let count = min(count, buffer.readableBytes)
        buffer.withUnsafeReadableBytes { bytes in
            guard let base = bytes.baseAddress else { return }
            destination.copyMemory(from: base, byteCount: count)
        }
        buffer.moveReaderIndex(forwardBy: count)
        return count
    }

    /// A new BIO over `self`. The `SSL` it is given to owns the BIO; whoever owns the `SSL` keeps `self` alive.
    func makeBIO() -> OpaquePointer? {
        guard let method = ByteBufferBIOMethod.shared.method, let bio = BIO_new(method) else { return nil }
        BIO_set_data(bio, Unmanaged.passUnretained(self).toOpaque())
        BIO_set_init(bio, 1)
        return bio
    }

    fileprivate static func from(_ bio: OpaquePointer?) -> ByteBufferBIO? {
        guard let bio, let data = BIO_get_data(bio) else { return nil }
        return Unmanaged<ByteBufferBIO>.fromOpaque(data).takeUnretainedValue()
    }
}

/// The BIO_METHOD, made once per process.
private final class ByteBufferBIOMethod: @unchecked Sendable {
    static let shared = ByteBufferBIOMethod()
    /// Immutable after `init`; OpenSSL only reads it.
    let method: OpaquePointer?

    private init() {
        guard let method = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "length-echo ByteBuffer") else {
            self.method = nil
            return
        }
        _ = BIO_meth_set_write(method) { bio, data, length in
            guard let buffers = ByteBufferBIO.from(bio), let data, length >= 0 else { return -1 }
            shim_BIO_clear_retry_flags(bio)
            buffers.outbound.writeBytes(UnsafeRawBufferPointer(start: data, count: Int(length)))
            return length
        }
        _ = BIO_meth_set_read(method) { bio, data, length in
            guard let buffers = ByteBufferBIO.from(bio), let data, length >= 0 else { return -1 }
            shim_BIO_clear_retry_flags(bio)
            let count = buffers.read(into: UnsafeMutableRawPointer(data), count: Int(length))
            guard count > 0 else {
                shim_BIO_set_retry_read(bio)  // nothing yet: "try again later", never end of stream
                return -1
            }
            return Int32(count)
        }
        _ = BIO_meth_set_ctrl(method) { bio, command, _, _ in
            switch command {
            case BIO_CTRL_FLUSH:
                return 1
            case BIO_CTRL_PENDING:
                return ByteBufferBIO.from(bio).map { $0.inputPending } ?? 0
            case BIO_CTRL_WPENDING:
                return ByteBufferBIO.from(bio).map { $0.outbound.readableBytes } ?? 0
            default:
                return 0
            }
        }
        _ = BIO_meth_set_create(method) { _ in 1 }
        _ = BIO_meth_set_destroy(method) { bio in
            BIO_set_data(bio, nil)
            return 1
        }
        self.method = method
    }
}
