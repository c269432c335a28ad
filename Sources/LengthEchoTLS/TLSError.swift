internal import COpenSSL

/// A TLS failure, with the sentence a user should read.
///
/// The sentence says what happened in terms true for any program using the library; `cause` names the
/// cases a program can advise about in its own terms (the `client` executable, say, suggests `--ca` for
/// `.untrustedPeerCertificate`).
public struct TLSError: Error, Equatable, Sendable, CustomStringConvertible {
    /// What kind of failure it was.
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
        /// Any other OpenSSL failure after the handshake.
        case protocolError
    }

    /// The failures a program may want to advise about, each identified from OpenSSL's reason codes.
    public enum Cause: Equatable, Sendable {
        /// The peer's certificate is not signed by a CA this side trusts.
        case untrustedPeerCertificate
        /// The peer's certificate is for other names than the one expected.
        case wrongHost
        /// The peer's certificate verified, but its identity is not among those allowed (or pinned).
        case identityRefused
        /// The server demands a client certificate and none was sent.
        case clientCertificateRequired
        /// A TLS 1.2 server refused the handshake with a bare "handshake failure", which is what it says when
        /// a required client certificate is missing (or when no cipher is shared).
        case clientCertificateMaybeRequired
        /// The peer refused the certificate this side presented.
        case ourCertificateRefused
        /// No TLS version both sides allow.
        case noSharedVersion
        /// No cipher both sides allow.
        case noSharedCipher
        /// The peer did not speak TLS at all.
        case peerNotTLS
    }

    /// What kind of failure it was.
    public let kind: Kind
    /// The sentence a user reads.
    public let message: String
    /// What a program may advise about, when OpenSSL's reason codes say.
    public let cause: Cause?

    /// A failure of `kind`, told in `message`.
    public init(_ kind: Kind, _ message: String, cause: Cause? = nil) {
        self.kind = kind
        self.message = message
        self.cause = cause
    }

    /// The sentence a user reads.
    public var description: String { self.message }
}

/// OpenSSL's error queue is per thread: clear it before each call and drain it right after a failure, on
/// the same thread, so an error never leaks into another connection's report.
enum OpenSSLErrors {
    /// One queued error: which library raised it, its reason code (`SSL_R_*`, `X509_R_*`, ...), and
    /// OpenSSL's text for it, which is for people only and never matched on.
    struct Entry {
        let library: Int32
        let reason: Int32
        let text: String

        func `is`(_ reason: Int32, in library: Int32 = ERR_LIB_SSL) -> Bool {
            self.library == library && self.reason == reason
        }
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

extension [OpenSSLErrors.Entry] {
    /// Whether any entry carries one of `reasons` from `library`.
    func contains(anyOf reasons: Int32..., in library: Int32 = ERR_LIB_SSL) -> Bool {
        self.contains { entry in reasons.contains { entry.is($0, in: library) } }
    }
}
