import LengthEchoTLS
import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// What a connection's bytes and errors say about its peer, for the protocol stage to act on.
enum PeerSigns {
    /// Whether a connection's first bytes are a TLS ClientHello: a handshake record (22) of version 3.x whose
    /// message, where it has arrived, is a ClientHello (1). A plaintext message that starts so is improbable; a
    /// TLS client that got its bytes echoed back would only see garbage.
    static func looksLikeClientHello(_ bytes: ByteBuffer) -> Bool {
        let head = bytes.readableBytesView.prefix(6)
        guard head.count >= 3 else { return false }
        let start = head.startIndex
        return head[start] == 0x16 && head[start + 1] == 0x03 && head[start + 2] <= 0x04
            && (head.count < 6 || head[start + 5] == 0x01)
    }

    /// A peer that resets or vanishes, or closes TLS without close_notify: routine, not worth an info line.
    static func isRoutine(_ error: any Error) -> Bool {
        if let error = error as? IOError { return error.errnoCode == ECONNRESET || error.errnoCode == EPIPE }
        if let error = error as? TLSError { return error.kind == .uncleanShutdown }
        return false
    }
}
