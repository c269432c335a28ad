internal import COpenSSL
import LengthEchoCore

#if canImport(Glibc)
import Glibc
#endif

extension TLSContext {
    /// Which certificates are accepted by identity, on top of the CA's verification: a verified leaf whose common
    /// name, DNS name, URI (a SPIFFE ID, say) or SubjectPublicKeyInfo SHA-256 is listed. Matched exactly (no
    /// wildcards), any one listed identity enough. Empty: any certificate the CA verifies.
    public struct IdentityPolicy: Sendable, Equatable {
        /// Subject common names (a certificate with exactly one CN matches on it).
        public var commonNames: [String]
        /// subjectAltName DNS names.
        public var dnsNames: [String]
        /// subjectAltName URIs (a SPIFFE ID, say).
        public var uris: [String]
        /// SHA-256 digests of the DER SubjectPublicKeyInfo, 32 bytes each.
        public var publicKeySHA256: [[UInt8]]

        /// A policy accepting any of the identities listed.
        public init(
            commonNames: [String] = [], dnsNames: [String] = [], uris: [String] = [], publicKeySHA256: [[UInt8]] = []
        ) {
            self.commonNames = commonNames
            self.dnsNames = dnsNames
            self.uris = uris
            self.publicKeySHA256 = publicKeySHA256
        }

        /// Whether nothing is listed (then any certificate the CA verifies is accepted).
        public var isEmpty: Bool {
            self.commonNames.isEmpty && self.dnsNames.isEmpty && self.uris.isEmpty && self.publicKeySHA256.isEmpty
        }

        /// A SHA-256 digest written in hex, either case, colons allowed, with or without the label `openssl dgst
        /// -sha256` puts before it (`SHA2-256(stdin)= `); nil when it is not 32 bytes of hex.
        public static func digest(hex text: String) -> [UInt8]? {
            let bare = text.split(separator: "= ", omittingEmptySubsequences: false).last ?? Substring(text)
            let digits = Array(bare.utf8.filter { $0 != UInt8(ascii: ":") })
            guard digits.count == 64 else { return nil }
            var bytes: [UInt8] = []
            for index in stride(from: 0, to: 64, by: 2) {
                guard let byte = UInt8(String(decoding: digits[index..<index + 2], as: UTF8.self), radix: 16) else {
                    return nil
                }
                bytes.append(byte)
            }
            return bytes
        }
    }
}

/// Spelled as before inside the package.
package typealias IdentityPolicy = TLSContext.IdentityPolicy

/// What a certificate says about who it is, as the policy matches it.
struct CertificateIdentity {
    var commonNames: [String] = []
    var dnsNames: [String] = []
    var uris: [String] = []
    var publicKeySHA256: [UInt8] = []

    /// - Parameter digest: SHA-256 as fetched from the provider once per context (nil if that fetch failed:
    ///   then OpenSSL's built-in `EVP_sha256()`).
    init(_ certificate: OpaquePointer, digest: OpaquePointer?) {
        if let subject = X509_get_subject_name(certificate) {
            var index = X509_NAME_get_index_by_NID(subject, NID_commonName, -1)
            while index >= 0 {
                if let entry = X509_NAME_get_entry(subject, index), let data = X509_NAME_ENTRY_get_data(entry),
                    let text = Self.text(data)
                {
                    self.commonNames.append(text)
                }
                index = X509_NAME_get_index_by_NID(subject, NID_commonName, index)
            }
        }
        if let raw = X509_get_ext_d2i(certificate, NID_subject_alt_name, nil, nil) {
            let names = OpaquePointer(raw)
            defer { GENERAL_NAMES_free(names) }
            for index in 0..<OPENSSL_sk_num(names) {
                guard let entry = OPENSSL_sk_value(names, index)?.assumingMemoryBound(to: GENERAL_NAME.self) else {
                    continue
                }
                switch entry.pointee.type {
                case GEN_DNS: if let text = entry.pointee.d.dNSName.flatMap(Self.raw) { self.dnsNames.append(text) }
                case GEN_URI:
                    if let text = entry.pointee.d.uniformResourceIdentifier.flatMap(Self.raw) { self.uris.append(text) }
                default: break
                }
            }
        }
        if let key = X509_get_X509_PUBKEY(certificate) {
            var der: UnsafeMutablePointer<UInt8>?
            let length = i2d_X509_PUBKEY(key, &der)
            if length > 0, let der {
                var sha256 = [UInt8](repeating: 0, count: 32)
                var size: UInt32 = 0
                if EVP_Digest(der, Int(length), &sha256, &size, digest ?? EVP_sha256(), nil) == 1, size == 32 {
                    self.publicKeySHA256 = sha256
                }
                CRYPTO_free(der, nil, 0)
            }
        }
    }

    /// A common name counts only in a certificate with exactly one: with several, which one names the holder is
    /// anyone's guess, and a CA that let a requester add one would let it add an allowed name.
    func allowed(by policy: IdentityPolicy) -> Bool {
        (self.commonNames.count == 1 && policy.commonNames.contains(self.commonNames[0]))
            || policy.dnsNames.contains(where: self.dnsNames.contains)
            || policy.uris.contains(where: self.uris.contains)
            || (!self.publicKeySHA256.isEmpty && policy.publicKeySHA256.contains(self.publicKeySHA256))
    }

    /// For a log line or an error: what the certificate claims (escaped: it is the peer's text).
    var description: String {
        var parts =
            self.commonNames.map { "CN=\($0)" } + self.dnsNames.map { "DNS:\($0)" }
            + self.uris.map { "URI:\($0)" }
        parts.append("SPKI sha256 " + self.publicKeySHA256.map { String(format2: $0) }.joined())
        return Escaping.printable(Array(parts.joined(separator: ", ").utf8))
    }

    private static func text(_ string: UnsafeMutablePointer<ASN1_STRING>) -> String? {
        var out: UnsafeMutablePointer<UInt8>?
        let length = ASN1_STRING_to_UTF8(&out, string)
        guard length >= 0, let out else { return nil }
        defer { CRYPTO_free(out, nil, 0) }
        return String(decoding: UnsafeBufferPointer(start: out, count: Int(length)), as: UTF8.self)
    }

    private static func raw(_ string: UnsafeMutablePointer<ASN1_IA5STRING>) -> String? {
        guard let data = ASN1_STRING_get0_data(string) else { return nil }
        return String(decoding: UnsafeBufferPointer(start: data, count: Int(ASN1_STRING_length(string))), as: UTF8.self)
    }
}

extension String {
    /// Two lowercase hex digits.
    init(format2 byte: UInt8) {
        let digits = Array("0123456789abcdef")
        self = String([digits[Int(byte >> 4)], digits[Int(byte & 0xF)]])
    }
}

/// OpenSSL's verify callback for servers that ask for client certificates and for clients with an identity policy:
/// at the leaf (depth 0), once the chain has verified, a server refuses a CA certificate, and the leaf must match
/// the policy if there is one; otherwise the handshake fails with an alert, and the connection remembers what was
/// refused for its error. It also accepts a stale CRL when told to.
func identityVerifyCallback(_ preverified: Int32, _ store: OpaquePointer?) -> Int32 {
    guard let store, let connection = connection(verifying: store) else { return preverified }
    // A CRL past its next update, accepted when the server was told to (it warned at start).
    if preverified == 0, X509_STORE_CTX_get_error(store) == X509_V_ERR_CRL_HAS_EXPIRED, connection.allowsStaleCRL {
        X509_STORE_CTX_set_error(store, X509_V_OK)
        return 1
    }
    guard preverified == 1, X509_STORE_CTX_get_error_depth(store) == 0,
        let certificate = X509_STORE_CTX_get_current_cert(store)
    else { return preverified }
    // A server takes a client's own certificate only, not a CA's (basicConstraints CA:TRUE), whatever it names.
    if connection.isServer && X509_check_ca(certificate) == 1 {
        connection.refusedIdentity = "a CA certificate (CA:TRUE), not a client's own"
        X509_STORE_CTX_set_error(store, X509_V_ERR_APPLICATION_VERIFICATION)
        return 0
    }
    // The leaf, once its chain has verified, against the policy (a context can have a callback for stale CRLs
    // alone: then nothing is read from the certificate).
    guard let policy = connection.identityPolicy else { return preverified }
    let identity = CertificateIdentity(certificate, digest: connection.identityDigest)
    guard !identity.allowed(by: policy) else { return 1 }
    connection.refusedIdentity = identity.description
    X509_STORE_CTX_set_error(store, X509_V_ERR_APPLICATION_VERIFICATION)
    return 0
}

/// The connection whose handshake `store` is verifying, through its SSL's application data.
private func connection(verifying store: OpaquePointer) -> TLSConnection? {
    guard let ssl = X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx()),
        let connection = SSL_get_ex_data(OpaquePointer(ssl), ExDataIndex.connection)
    else { return nil }
    return Unmanaged<TLSConnection>.fromOpaque(connection).takeUnretainedValue()
}
