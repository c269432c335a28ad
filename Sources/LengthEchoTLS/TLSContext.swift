internal import COpenSSL

#if canImport(Glibc)
import Glibc
#endif

/// One immutable `SSL_CTX`, built once per role before serving and shared by every connection.
///
/// Building a context parses PEM files and is slow; creating an `SSL` from a finished context is cheap.
/// A context is finished by the factory that builds it (`server(...)`, `client(...)`) and never changed after
/// that (its session-ticket keys rotate, under their own lock), which is what makes sharing it between threads
/// safe.
public final class TLSContext: @unchecked Sendable {
    /// The `SSL_CTX`, owned; only `makeSSL` hands it to OpenSSL.
    private let pointer: OpaquePointer
    package let isServer: Bool
    /// Client role: whether the peer's certificate and name are verified (false only with --insecure).
    package let verifiesPeer: Bool
    /// Client role: whether a client certificate was configured (for error hints).
    package let hasCertificate: Bool

    /// The TLS 1.3 suites, cheapest first: AES-128-GCM where the CPU has AES instructions (as BoringSSL orders
    /// them), ChaCha20-Poly1305 first where it has not.
    static let tls13Suites: String = {
        let aes = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384"
        let chacha = "TLS_CHACHA20_POLY1305_SHA256"
        return cpuHasAES ? "\(aes):\(chacha)" : "\(chacha):\(aes)"
    }()

    /// Whether the CPU has AES instructions (x86 `aes`, ARM `aes` in /proc/cpuinfo's flags).
    static let cpuHasAES: Bool = {
        guard let file = fopen("/proc/cpuinfo", "r") else { return true }
        defer { fclose(file) }
        var line = [CChar](repeating: 0, count: 4096)
        while fgets(&line, Int32(line.count), file) != nil {
            let text = String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            guard text.hasPrefix("flags") || text.hasPrefix("Features") else { continue }
            return text.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" }).contains("aes")
        }
        return true
    }()

    /// The Mozilla "intermediate" TLS 1.2 cipher list (ECDHE with AEAD only). TLS 1.3 suites are all AEAD.
    package static let intermediateCiphers = [
        "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
    ].joined(separator: ":")

    /// Server role: the rotating session-ticket keys, which OpenSSL's ticket callback finds in the context.
    private let ticketKeys: TicketKeys?
    /// The peer identities accepted beyond the CA's verification (client certificates on a server, pinned keys
    /// on a client); nil: any certificate the CA verifies.
    let identityPolicy: IdentityPolicy?
    /// Server role: the client CRLs checked, if any.
    package private(set) var revocation: RevocationPolicy?
    /// Server role: the CRLs past their next-update date when loaded (set while the context is built).
    package private(set) var staleCRLs: [String] = []
    /// Whether the verify callback has work to do: a server verifying clients (which must send a leaf, not a CA),
    /// an identity policy, or stale CRLs to accept.
    var needsVerifyCallback: Bool {
        (self.isServer && self.verifiesPeer) || self.identityPolicy != nil || self.revocation?.allowStale == true
    }
    /// SHA-256, fetched from the provider once for the identity policy's SPKI digests (`EVP_sha256()` would
    /// fetch it again for every certificate checked); nil without a policy. Owned here, freed in deinit.
    let identityDigest: OpaquePointer?

    private init(
        pointer: OpaquePointer,
        isServer: Bool,
        verifiesPeer: Bool,
        hasCertificate: Bool,
        ticketKeys: TicketKeys? = nil,
        identityPolicy: IdentityPolicy? = nil
    ) {
        self.pointer = pointer
        self.ticketKeys = ticketKeys
        self.identityPolicy = identityPolicy
        self.identityDigest = identityPolicy == nil ? nil : EVP_MD_fetch(nil, "SHA256", nil)
        self.isServer = isServer
        self.verifiesPeer = verifiesPeer
        self.hasCertificate = hasCertificate
    }

    deinit {
        EVP_MD_free(self.identityDigest)
        SSL_CTX_free(self.pointer)
    }

    /// The certificate's expiry (its notAfter) in seconds since 1970, or nil without one (a client context
    /// without a client certificate).
    public var certificateNotAfter: Int? {
        guard let certificate = SSL_CTX_get0_certificate(self.pointer),
            let notAfter = X509_get0_notAfter(certificate)
        else { return nil }
        var parts = tm()
        guard ASN1_TIME_to_tm(notAfter, &parts) == 1 else { return nil }
        return timegm(&parts)
    }

    /// A new `SSL` for one connection, owned by the caller (`TLSConnection`).
    func makeSSL() -> OpaquePointer? {
        SSL_new(self.pointer)
    }

    /// Server role: starts a new session-ticket key now (the previous one still accepted). Tests use it; a
    /// deployment's keys rotate by age.
    func rotateTicketKeys() {
        self.ticketKeys?.rotate()
    }

    /// A server context: TLS 1.2 and 1.3 (or 1.3 only), the intermediate ciphers, no renegotiation, no
    /// compression, session tickets and a session cache for resumption.
    ///
    /// - Parameters:
    ///   - certificateChain: the certificate chain's PEM file, leaf first.
    ///   - privateKey: the private key's PEM file (unencrypted).
    ///   - clientCA: the PEM file of the CA that signs client certificates.
    ///   - clientAuthentication: whether clients are asked for a certificate, and whether one is required.
    ///   - minimumVersion: the oldest TLS version accepted.
    ///   - maximumVersion: the newest TLS version offered.
    ///   - ticketKeyLifetime: how long one session-ticket key issues tickets before the next takes
    ///     over (its tickets are still accepted, and renewed, for as long again).
    ///   - requireALPN: refuse a client that offers no ALPN (one offering a list without `length-echo` is
    ///     always refused).
    ///   - keyLog: write every connection's secrets to the process's key log (`TLSKeyLog`).
    ///   - allowedClients: which verified client certificates are accepted, by identity; empty: any.
    ///   - revocation: the client CRLs to check, if any.
    /// - Throws: `TLSError` saying which file or setting OpenSSL refused, and why.
    public static func server(
        certificateChain: String,
        privateKey: String,
        clientCA: String? = nil,
        clientAuthentication: ClientAuthentication = .none,
        minimumVersion: Version = .tls12,
        maximumVersion: Version = .tls13,
        ticketKeyLifetime: Duration = .seconds(12 * 3600),
        requireALPN: Bool = false,
        keyLog: Bool = false,
        allowedClients: IdentityPolicy = IdentityPolicy(),
        revocation: RevocationPolicy? = nil
    ) throws(TLSError) -> TLSContext {
        let ctx = try Self.newContext(TLS_server_method())
        guard let ticketKeys = TicketKeys(lifetime: ticketKeyLifetime) else {
            SSL_CTX_free(ctx)
            throw TLSError(
                .configuration,
                "cannot make a session-ticket key: no random bytes, or no AES-256-CBC in OpenSSL's providers")
        }
        if (!allowedClients.isEmpty || revocation != nil) && clientAuthentication == .none {
            SSL_CTX_free(ctx)
            throw TLSError(
                .configuration, "allowed client identities and client CRLs need client certificates to be asked for")
        }
        let context = TLSContext(
            pointer: ctx, isServer: true, verifiesPeer: clientAuthentication != .none, hasCertificate: true,
            ticketKeys: ticketKeys, identityPolicy: allowedClients.isEmpty ? nil : allowedClients)
        try context.applyCommonSettings(minimumVersion: minimumVersion, maximumVersion: maximumVersion)
        // Tickets under rotating keys (TicketKeys) rather than one key for the life of the process. The keys
        // object lives as long as the context, whose SSLs keep it (TLSConnection holds its context).
        try check(
            SSL_CTX_set_ex_data(ctx, ExDataIndex.ticketKeys, Unmanaged.passUnretained(ticketKeys).toOpaque()) == 1,
            "the session-ticket keys"
        )
        try check(SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, ticketKeyCallback) == 1, "the session-ticket callback")
        // One TLS 1.3 ticket per handshake instead of OpenSSL's two: a client resumes with one, and each
        // ticket costs the server an encryption (about 3% of a full handshake here).
        try check(SSL_CTX_set_num_tickets(ctx, 1) == 1, "the number of session tickets")
        // Mozilla intermediate: the client's TLS 1.2 cipher preference (all offered ciphers are strong); TLS 1.3
        // clients get the server's suite order (see serverClientHello).
        _ = shim_SSL_CTX_set_session_cache_mode(ctx, shim_SSL_SESS_CACHE_SERVER())  // returns the old mode
        var sessionContext = Array("length-echo".utf8)
        try check(
            SSL_CTX_set_session_id_context(ctx, &sessionContext, UInt32(sessionContext.count)) == 1,
            "the session id context"
        )
        try context.useCertificate(chain: certificateChain, key: privateKey)
        // The TLS 1.3 suites in the server's order of preference (applied to TLS 1.3 clients by the ClientHello
        // callback): the cheapest first on this CPU; all three still offered.
        try check(SSL_CTX_set_ciphersuites(ctx, Self.tls13Suites) == 1, "the TLS 1.3 cipher suites")
        context.offerALPN(required: requireALPN, on: ctx)
        if keyLog { context.logKeys(on: ctx) }

        if clientAuthentication != .none {
            guard let clientCA else {
                throw TLSError(
                    .configuration,
                    "client authentication \(clientAuthentication.rawValue) needs a client CA: the CA that signs client certificates"
                )
            }
            try Self.trust(clientCA, what: "client CA file", on: ctx)
            // The CA names sent in the certificate request, so a client can pick the right certificate.
            guard let names = SSL_load_client_CA_file(clientCA) else {
                throw TLSError(
                    .configuration,
                    "cannot read the CA names in client CA file \(clientCA): \(OpenSSLErrors.describe(OpenSSLErrors.drain(), fallback: "no certificates in it"))"
                )
            }
            SSL_CTX_set_client_CA_list(ctx, names)
            // An allow list needs a certificate to match: with one, a client that sends none is refused even when
            // client authentication is optional (sending nothing must not beat sending the wrong identity).
            let mode =
                clientAuthentication == .required || context.identityPolicy != nil
                ? SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT : SSL_VERIFY_PEER
            if let revocation {
                context.revocation = revocation
                context.staleCRLs = try context.useCRLs(revocation, issuedBy: clientCA, on: ctx)
            }
            SSL_CTX_set_verify(ctx, mode, context.needsVerifyCallback ? identityVerifyCallback : nil)
        }
        return context
    }

    /// A client context. It verifies the server's chain against `trustRoots` (and, per connection, the
    /// host name), unless `verify` is false.
    public static func client(
        trustRoots: TrustRoots = .system,
        certificateChain: String? = nil,
        privateKey: String? = nil,
        minimumVersion: Version = .tls12,
        maximumVersion: Version = .tls13,
        verify: Bool = true,
        keyLog: Bool = false,
        pinnedPublicKeys: [[UInt8]] = []
    ) throws(TLSError) -> TLSContext {
        let ctx = try Self.newContext(TLS_client_method())
        let context = TLSContext(
            pointer: ctx, isServer: false, verifiesPeer: verify, hasCertificate: certificateChain != nil,
            identityPolicy: pinnedPublicKeys.isEmpty ? nil : IdentityPolicy(publicKeySHA256: pinnedPublicKeys))
        try context.applyCommonSettings(minimumVersion: minimumVersion, maximumVersion: maximumVersion)
        try context.sendALPN(on: ctx)
        if keyLog { context.logKeys(on: ctx) }
        // The client keeps its session itself (TLSHandler.session): OpenSSL's client cache would only fill.
        _ = shim_SSL_CTX_set_session_cache_mode(ctx, Int(SSL_SESS_CACHE_OFF))  // returns the old mode
        switch trustRoots {
        case .system:
            try check(SSL_CTX_set_default_verify_paths(ctx) == 1, "the system's trust store")
        case .file(let path):
            try Self.trust(path, what: "CA file", on: ctx)
        }
        // Pinned keys are checked on top of the usual verification, in the verify callback.
        SSL_CTX_set_verify(
            ctx, verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, pinnedPublicKeys.isEmpty ? nil : identityVerifyCallback)
        switch (certificateChain, privateKey) {
        case (let chain?, let key?):
            try context.useCertificate(chain: chain, key: key)
        case (nil, nil):
            break
        default:
            throw TLSError(.configuration, "a client certificate needs both a certificate chain and its private key")
        }
        return context
    }

    private func applyCommonSettings(minimumVersion: Version, maximumVersion: Version) throws(TLSError) {
        let ctx = self.pointer
        guard minimumVersion.openSSLValue <= maximumVersion.openSSLValue else {
            throw TLSError(
                .configuration,
                "the minimum TLS version \(minimumVersion.rawValue) is above the maximum \(maximumVersion.rawValue)")
        }
        try check(shim_SSL_CTX_set_min_proto_version(ctx, minimumVersion.openSSLValue) == 1, "the minimum TLS version")
        try check(shim_SSL_CTX_set_max_proto_version(ctx, maximumVersion.openSSLValue) == 1, "the maximum TLS version")
        // No compression (CRIME), and no renegotiation in either role: a TLS 1.2 peer asking for one is
        // refused rather than followed into a state where writes would have to wait for reads.
        let options = shim_SSL_OP_NO_COMPRESSION() | shim_SSL_OP_NO_RENEGOTIATION()
        try check(SSL_CTX_set_options(ctx, options) & options == options, "the TLS options")
        try check(SSL_CTX_set_cipher_list(ctx, Self.intermediateCiphers) == 1, "the TLS 1.2 cipher list")
        try check(shim_SSL_CTX_set1_groups_list(ctx, "X25519:P-256:P-384") == 1, "the key exchange groups")
        // Idle connections give their read and write buffers back (about 34 KiB each): each connection frees
        // them whenever its handshake waits for the peer, and releases them after every record once the
        // handshake is done (TLSConnection.handshake).
        // Never prompt on the terminal for a passphrase: an encrypted key is an error with a hint.
        SSL_CTX_set_default_passwd_cb(ctx) { _, _, _, _ in 0 }
    }

    private func useCertificate(chain: String, key: String) throws(TLSError) {
        let ctx = self.pointer
        try Self.checkReadable(chain, what: "certificate file")
        try Self.checkReadable(key, what: "key file")
        OpenSSLErrors.clear()
        guard SSL_CTX_use_certificate_chain_file(ctx, chain) == 1 else {
            throw TLSError(
                .configuration,
                "cannot use certificate file \(chain): \(OpenSSLErrors.describe(OpenSSLErrors.drain(), fallback: "no certificate in it")) (expected a PEM certificate chain)"
            )
        }
        if Self.fileContains(key, "ENCRYPTED") {
            throw TLSError(
                .configuration,
                "the key \(key) is encrypted with a passphrase; give the server an unencrypted key (openssl pkey -in \(key) -out plain.key) and keep it mode 0600"
            )
        }
        OpenSSLErrors.clear()
        guard SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) == 1 else {
            let entries = OpenSSLErrors.drain()
            if entries.contains(anyOf: X509_R_KEY_VALUES_MISMATCH, in: ERR_LIB_X509) {
                throw TLSError(.configuration, "the key \(key) does not match the certificate \(chain)")
            }
            throw TLSError(
                .configuration,
                "cannot use key file \(key): \(OpenSSLErrors.describe(entries, fallback: "no private key in it")) (expected a PEM private key)"
            )
        }
        OpenSSLErrors.clear()
        guard SSL_CTX_check_private_key(ctx) == 1 else {
            _ = OpenSSLErrors.drain()
            throw TLSError(.configuration, "the key \(key) does not match the certificate \(chain)")
        }
    }

    /// A new, empty `SSL_CTX` for `method`, owned by the caller.
    private static func newContext(_ method: OpaquePointer?) throws(TLSError) -> OpaquePointer {
        OpenSSLErrors.clear()
        guard let ctx = SSL_CTX_new(method) else {
            throw TLSError(
                .configuration,
                "cannot create a TLS context: \(OpenSSLErrors.describe(OpenSSLErrors.drain(), fallback: "out of memory"))"
            )
        }
        return ctx
    }

    /// Verifies peers against the CA certificates in the PEM file at `path` (`what` names it in errors).
    private static func trust(_ path: String, what: String, on ctx: OpaquePointer) throws(TLSError) {
        try Self.checkReadable(path, what: what)
        OpenSSLErrors.clear()
        guard SSL_CTX_load_verify_locations(ctx, path, nil) == 1 else {
            throw TLSError(
                .configuration,
                "cannot use \(what) \(path): \(OpenSSLErrors.describe(OpenSSLErrors.drain(), fallback: "no certificates in it"))"
            )
        }
    }

    static func checkReadable(_ path: String, what: String) throws(TLSError) {
        guard let file = fopen(path, "r") else {
            let reason = String(cString: strerror(errno))
            throw TLSError(.configuration, "cannot read \(what) \(path): \(reason)")
        }
        fclose(file)
    }

    private static func fileContains(_ path: String, _ needle: String) -> Bool {
        guard let file = fopen(path, "r") else { return false }
        defer { fclose(file) }
        var line = [CChar](repeating: 0, count: 4096)
        while fgets(&line, Int32(line.count), file) != nil {
            let text = String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            if text.contains(needle) { return true }
        }
        return false
    }
}

/// Turns a setter's failure into a configuration error: a context that silently lacks a setting is
/// worse than none.
func check(_ succeeded: Bool, _ what: String) throws(TLSError) {
    guard succeeded else {
        throw TLSError(
            .configuration,
            "cannot set \(what): \(OpenSSLErrors.describe(OpenSSLErrors.drain(), fallback: "OpenSSL refused it"))"
        )
    }
}
