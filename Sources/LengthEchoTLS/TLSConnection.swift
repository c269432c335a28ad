internal import COpenSSL
import LengthEchoCore
import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// What a finished handshake agreed on.
public struct TLSConnectionInfo: Sendable, Equatable {
    /// The protocol version, as OpenSSL names it (`TLSv1.3`).
    public let version: String
    /// The cipher suite, as OpenSSL names it (`TLS_AES_128_GCM_SHA256`).
    public let cipher: String
    /// Whether the handshake resumed an earlier session (a ticket, or a TLS 1.2 session ID).
    public let resumed: Bool
    /// The protocol agreed by ALPN (`length-echo`), or nil when none was.
    public let alpn: String?
    /// The peer certificate's subject (one line, escaped), when it sent one.
    public let peerSubject: String?
    /// The peer certificate's expiry, when it sent one.
    public let peerNotAfter: String?
}

/// One `SSL` over a `ByteBufferBIO`: ciphertext goes in with `feed` and comes out with `takeOutput`,
/// plaintext goes through `read` and `write`. Owns and frees the `SSL` (which owns the BIO); no OpenSSL
/// handle leaves this type, which offers verbs instead.
final class TLSConnection {
    enum Status {
        /// The operation finished.
        case done
        /// OpenSSL needs more bytes from the peer before it can go on.
        case wantRead
        /// The peer sent close_notify.
        case closed
        /// The operation failed; the entries are what OpenSSL said.
        case failed([OpenSSLErrors.Entry])
    }

    private let ssl: OpaquePointer
    /// The ciphertext both ways; the `SSL` reads and writes it through a BIO made over it.
    private let io = ByteBufferBIO()
    let isServer: Bool
    /// The context the `SSL` came from, kept alive with it (its ticket keys are used during the connection).
    private let context: TLSContext
    /// Client role: whether a client certificate is configured (for the cause of a refusal).
    let hasCertificate: Bool
    /// The host name or address the client connected to and verifies (client role).
    let expectedHost: String?
    /// Whether an SSL call failed (a fatal alert, sent or received): the session is not to be kept.
    private var failed = false
    /// What the peer's certificate claimed when the identity policy refused it (for the error).
    var refusedIdentity: String?
    /// The identities accepted beyond the CA's verification (the context's), if any.
    var identityPolicy: IdentityPolicy? { self.context.identityPolicy }
    /// The digest the policy's SPKI hashes are made with (the context's, fetched once).
    var identityDigest: OpaquePointer? { self.context.identityDigest }
    /// Whether a CRL past its next update is accepted (the server was told to).
    var allowsStaleCRL: Bool { self.context.revocation?.allowStale == true }

    init(context: TLSContext, expectedHost: String?, session: TLSSession? = nil) throws(TLSError) {
        OpenSSLErrors.clear()
        guard let ssl = context.makeSSL() else {
            throw TLSError(
                .protocolError,
                "cannot create a TLS connection: \(OpenSSLErrors.describe(OpenSSLErrors.drain(), fallback: "out of memory"))"
            )
        }
        guard let bio = self.io.makeBIO() else {
            SSL_free(ssl)
            throw TLSError(.protocolError, "cannot create the TLS connection's BIO")
        }
        SSL_set_bio(ssl, bio, bio)  // the SSL owns the BIO now
        self.ssl = ssl
        self.context = context
        self.isServer = context.isServer
        self.hasCertificate = context.hasCertificate
        self.expectedHost = expectedHost
        // The verify callback finds this connection through the SSL (for the identity policy). The SSL lives
        // no longer than this object, which frees it.
        if context.needsVerifyCallback {
            guard SSL_set_ex_data(ssl, ExDataIndex.connection, Unmanaged.passUnretained(self).toOpaque()) == 1 else {
                throw TLSError(.protocolError, "cannot create a TLS connection: OpenSSL gave no application-data slot")
            }
        }
        if context.isServer {
            SSL_set_accept_state(ssl)
        } else {
            SSL_set_connect_state(ssl)
            if let session { try session.apply(to: ssl) }
            if let host = expectedHost {
                try Self.expect(host: host, on: ssl, verify: context.verifiesPeer)
            }
        }
    }

    deinit {
        // A finished handshake whose connection then ended without close_notify (the peer closed abruptly, or we
        // closed at a deadline) is not a bad session: marked shut down, it stays in the server's session cache
        // for TLS 1.2 clients that resume by session ID, where OpenSSL would drop it. A fatal alert has removed
        // it from the cache already.
        if SSL_is_init_finished(self.ssl) == 1 && !self.failed {
            SSL_set_shutdown(self.ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN)
        }
        SSL_free(self.ssl)
    }

    /// Sends `host` as SNI (names only) and, when verifying, makes the handshake check the certificate
    /// against it: exact names or whole-label wildcards, an IP address against the certificate's addresses.
    private static func expect(host: String, on ssl: OpaquePointer, verify: Bool) throws(TLSError) {
        guard !host.isEmpty else {
            // SSL_set1_host with an empty name would switch the name check off.
            throw TLSError(.configuration, "the server name to verify is empty")
        }
        OpenSSLErrors.clear()
        if Self.isIPAddress(host) {
            if verify, X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host) != 1 {
                throw TLSError(.configuration, "cannot verify the server against the address \(host)")
            }
            return
        }
        guard shim_SSL_set_tlsext_host_name(ssl, host) == 1 else {
            throw TLSError(
                .configuration,
                "cannot send \(host) as the server name (SNI): \(OpenSSLErrors.describe(OpenSSLErrors.drain(), fallback: "refused"))"
            )
        }
        if verify {
            SSL_set_hostflags(ssl, UInt32(X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS))
            guard SSL_set1_host(ssl, host) == 1 else {
                throw TLSError(.configuration, "cannot verify the server against the name \(host)")
            }
        }
    }

    static func isIPAddress(_ host: String) -> Bool {
        var v4 = in_addr()
        var v6 = in6_addr()
        return inet_pton(AF_INET, host, &v4) == 1 || inet_pton(AF_INET6, host, &v6) == 1
    }

    /// The session to resume on a later connection (client role), if the server offered one.
    var session: TLSSession? {
        guard let pointer = SSL_get1_session(self.ssl) else { return nil }
        guard SSL_SESSION_is_resumable(pointer) == 1 else {
            SSL_SESSION_free(pointer)
            return nil
        }
        return TLSSession(pointer: pointer)
    }

    // MARK: ciphertext in and out

    /// Hands bytes from the socket to OpenSSL.
    func feed(_ buffer: ByteBuffer) {
        self.io.feed(buffer)
    }

    /// Ciphertext fed in but not yet decrypted: an upper bound on the plaintext it can yield.
    var inputPending: Int { self.io.inputPending }

    /// Ciphertext OpenSSL has produced for the peer and nobody has taken yet.
    var outputPending: Int { self.io.outbound.readableBytes }

    /// Lets OpenSSL write its next records into `buffer` (a loop's scratch buffer) when it has nothing
    /// pending; otherwise keeps what is there.
    func offerOutputBuffer(_ buffer: () -> ByteBuffer) {
        if self.io.outbound.capacity == 0 { self.io.outbound = buffer() }
    }

    /// Takes the ciphertext produced so far, to send.
    func takeOutput() -> ByteBuffer {
        self.io.takeOutbound()
    }

    /// Gives back buffers left from the handshake or from a read when there is nothing in them.
    func releaseIdleBuffers() {
        self.io.shrink()
    }

    // MARK: SSL calls, each with a clean error queue

    /// Advances the handshake. OpenSSL's record buffers (about 34 KiB) are kept while a flight is read or
    /// written and freed whenever the handshake waits for the peer, so a stalled handshake holds no more than
    /// an idle connection; once done, they are released after every record (`SSL_MODE_RELEASE_BUFFERS`, set
    /// only now: during the handshake it would free and allocate them again for each of its records).
    func handshake() -> Status {
        OpenSSLErrors.clear()
        let status = self.status(SSL_do_handshake(self.ssl))
        switch status {
        case .done:
            _ = shim_SSL_set_mode(self.ssl, shim_SSL_MODE_RELEASE_BUFFERS())  // returns the new mode: it sets a bit
            _ = SSL_free_buffers(self.ssl)  // 0 when a record is still in them: released after it instead
        case .wantRead:
            _ = SSL_free_buffers(self.ssl)
        case .closed, .failed:
            break
        }
        return status
    }

    /// Decrypts what it can into `buffer`, growing it only if OpenSSL holds more than it has room for.
    func read(into buffer: inout ByteBuffer) -> Status {
        while true {
            OpenSSLErrors.clear()
            var count = 0
            let room = max(buffer.writableBytes, Int(SSL_pending(self.ssl)), 1)
            let result = buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: room) { out -> Int in
                let ok = SSL_read_ex(self.ssl, out.baseAddress, out.count, &count)
                return ok == 1 ? count : 0
            }
            if result > 0 {
                // Nothing left, decrypted or not: another SSL_read would only say "want read".
                if self.inputPending == 0 && SSL_has_pending(self.ssl) == 0 { return .wantRead }
                continue
            }
            let status = self.status(0)
            if case .done = status { continue }
            return status
        }
    }

    /// Encrypts all of `buffer`, or none of it: `.wantRead` means OpenSSL must read from the peer first
    /// (the write must be retried, with the same bytes, after the next read), `.failed` that the
    /// connection is unusable.
    func write(_ buffer: ByteBuffer) -> Status {
        buffer.withUnsafeReadableBytes { bytes -> Status in
            guard let base = bytes.baseAddress, bytes.count > 0 else { return .done }
            OpenSSLErrors.clear()
            var written = 0
            let ok = SSL_write_ex(self.ssl, base, bytes.count, &written)
            return ok == 1 ? .done : self.status(0)
        }
    }

    /// Queues close_notify for the peer.
    func shutdown() {
        OpenSSLErrors.clear()
        _ = SSL_shutdown(self.ssl)  // 0 (sent, the peer's not yet seen) and 1 are both fine here
        _ = OpenSSLErrors.drain()
    }

    private func status(_ result: Int32) -> Status {
        if result == 1 { return .done }
        switch SSL_get_error(self.ssl, result) {
        case SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE:
            // The BIO never pushes back on writes, so "want write" cannot last: both mean "feed me".
            return .wantRead
        case SSL_ERROR_ZERO_RETURN:
            return .closed
        default:
            self.failed = true
            return .failed(OpenSSLErrors.drain())
        }
    }

    // MARK: what the handshake agreed on, and why it failed

    var info: TLSConnectionInfo {
        let version = String(cString: SSL_get_version(self.ssl))
        let cipher =
            SSL_get_current_cipher(self.ssl).flatMap { SSL_CIPHER_get_name($0) }.map { String(cString: $0) } ?? "?"
        var subject: String?
        var notAfter: String?
        if let peer = SSL_get1_peer_certificate(self.ssl) {
            defer { X509_free(peer) }
            subject = Self.render { bio in
                _ = X509_NAME_print_ex(bio, X509_get_subject_name(peer), 0, shim_XN_FLAG_ONELINE())
            }
            notAfter = Self.render { bio in _ = ASN1_TIME_print(bio, X509_get0_notAfter(peer)) }
        }
        var selected: UnsafePointer<UInt8>?
        var selectedLength: UInt32 = 0
        SSL_get0_alpn_selected(self.ssl, &selected, &selectedLength)
        let alpn = selected.map {
            String(decoding: UnsafeBufferPointer(start: $0, count: Int(selectedLength)), as: UTF8.self)
        }
        return TLSConnectionInfo(
            version: version,
            cipher: cipher,
            resumed: SSL_session_reused(self.ssl) == 1,
            alpn: alpn,
            peerSubject: subject,
            peerNotAfter: notAfter
        )
    }

    /// The names and addresses the peer's certificate covers.
    var peerNames: [String] {
        // After a failed verification only the chain is kept; its first certificate is the peer's.
        guard let chain = SSL_get_peer_cert_chain(self.ssl), OPENSSL_sk_num(chain) > 0,
            let first = OPENSSL_sk_value(chain, 0)
        else { return [] }
        let peer = OpaquePointer(first)
        guard let raw = X509_get_ext_d2i(peer, NID_subject_alt_name, nil, nil) else { return [] }
        let names = OpaquePointer(raw)
        defer { GENERAL_NAMES_free(names) }
        var result: [String] = []
        for index in 0..<OPENSSL_sk_num(names) {
            guard let entry = OPENSSL_sk_value(names, index)?.assumingMemoryBound(to: GENERAL_NAME.self) else {
                continue
            }
            switch entry.pointee.type {
            case GEN_DNS:
                if let text = entry.pointee.d.dNSName, let data = ASN1_STRING_get0_data(text) {
                    result.append(
                        String(
                            decoding: UnsafeBufferPointer(start: data, count: Int(ASN1_STRING_length(text))),
                            as: UTF8.self))
                }
            case GEN_IPADD:
                if let octets = entry.pointee.d.iPAddress, let data = ASN1_STRING_get0_data(octets) {
                    let bytes = Array(UnsafeBufferPointer(start: data, count: Int(ASN1_STRING_length(octets))))
                    result.append(Self.formatAddress(bytes))
                }
            default:
                break
            }
        }
        return result
    }

    private static func formatAddress(_ bytes: [UInt8]) -> String {
        var text = [CChar](repeating: 0, count: 64)
        let family = bytes.count == 4 ? AF_INET : AF_INET6
        guard bytes.count == 4 || bytes.count == 16, inet_ntop(family, bytes, &text, 64) != nil else { return "?" }
        return String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    private static func render(_ body: (OpaquePointer) -> Void) -> String? {
        guard let bio = BIO_new(BIO_s_mem()) else { return nil }
        defer { BIO_free(bio) }
        body(bio)
        var memory: UnsafeMutablePointer<BUF_MEM>?
        _ = shim_BIO_get_mem_ptr(bio, &memory)
        guard let memory, let data = memory.pointee.data else { return nil }
        return String(decoding: UnsafeRawBufferPointer(start: data, count: memory.pointee.length), as: UTF8.self)
    }

    /// The result of verifying the peer's certificate (`X509_V_OK`, or why it failed).
    var verifyResult: Int { SSL_get_verify_result(self.ssl) }
}

/// A TLS session a client can resume, owning its `SSL_SESSION` reference.
public final class TLSSession: @unchecked Sendable {
    private let pointer: OpaquePointer

    fileprivate init(pointer: OpaquePointer) {
        self.pointer = pointer
    }

    /// Offers the session for resumption on `ssl` (the `SSL` takes its own reference).
    fileprivate func apply(to ssl: OpaquePointer) throws(TLSError) {
        guard SSL_set_session(ssl, self.pointer) == 1 else {
            throw TLSError(
                .configuration,
                "cannot offer the saved TLS session: \(OpenSSLErrors.describe(OpenSSLErrors.drain(), fallback: "refused"))"
            )
        }
    }

    deinit {
        SSL_SESSION_free(self.pointer)
    }
}
