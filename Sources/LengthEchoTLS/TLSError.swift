import COpenSSL

/// A TLS failure, with the sentence a user should read and, where there is one, what to do about it.
public struct TLSError: Error, Equatable, Sendable, CustomStringConvertible {
    public enum Kind: Equatable, Sendable {
        /// A certificate, key or CA file could not be used.
        case configuration
        /// The handshake failed; `description` says why.
        case handshake
        /// The peer's certificate did not verify (OpenSSL's X509_V_ERR_* code).
        case verification(code: Int32)
        /// The peer did not finish the handshake in time.
        case handshakeTimeout
        /// The peer closed the TCP connection without a TLS close_notify: the data may be truncated.
        case uncleanShutdown
        /// The peer does not speak TLS (a plaintext server, as seen by a TLS client).
        case peerNotTLS
        /// Any other OpenSSL failure after the handshake.
        case protocolError
    }

    public let kind: Kind
    public let message: String

    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }

    public var description: String { self.message }
}

/// OpenSSL's error queue is per thread: clear it before each call and drain it right after a failure, on
/// the same thread, so an error never leaks into another connection's report.
enum OpenSSLErrors {
    struct Entry {
        let library: Int32
        let reason: Int32
        let text: String
    }

    static func clear() {
        ERR_clear_error()
    }

    /// Empties the queue and returns its entries, oldest first.
    static func drain() -> [Entry] {
        var entries: [Entry] = []
        while true {
            let code = ERR_get_error()
            if code == 0 { break }
            let reason = ERR_reason_error_string(code).map { String(cString: $0) } ?? "error \(code)"
            entries.append(Entry(library: shim_ERR_GET_LIB(code), reason: shim_ERR_GET_REASON(code), text: reason))
        }
        return entries
    }

    /// The drained queue as one phrase, or `fallback` when it is empty.
    static func describe(_ entries: [Entry], fallback: String) -> String {
        entries.isEmpty ? fallback : entries.map(\.text).joined(separator: "; ")
    }
}
