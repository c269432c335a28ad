internal import COpenSSL
import LengthEchoCore

extension TLSContext {
    /// Revocation: the client CRLs a server checks client certificates against.
    public struct RevocationPolicy: Sendable, Equatable {
        /// PEM file with one or more CRLs.
        public var crlFile: String
        /// Check every certificate of the chain, not only the leaf (`X509_V_FLAG_CRL_CHECK_ALL`).
        public var checkWholeChain: Bool
        /// Accept a CRL past its next-update date (warned about) instead of refusing every client.
        public var allowStale: Bool

        /// Checks client certificates against the CRLs in `crlFile`.
        public init(crlFile: String, checkWholeChain: Bool = false, allowStale: Bool = false) {
            self.crlFile = crlFile
            self.checkWholeChain = checkWholeChain
            self.allowStale = allowStale
        }
    }
}

/// Spelled as before inside the package.
package typealias RevocationPolicy = TLSContext.RevocationPolicy

extension TLSContext {
    /// Loads the CRLs into the context's store and turns CRL checking on. Every CRL in the file must be signed by a
    /// CA of `clientCA` (named as its issuer, and its signature verified with that CA's key), and the whole file must
    /// read: a CRL another CA signed would refuse every client, and a half-read file would leave revocations out.
    /// Returns the CRLs past their next-update date (each as "FILE: next update DATE"), for the caller to warn about.
    func useCRLs(
        _ policy: RevocationPolicy, issuedBy clientCA: String, on ctx: OpaquePointer
    ) throws(TLSError)
        -> [String]
    {
        try Self.checkReadable(policy.crlFile, what: "CRL file")
        let issuers = try CertificateFile(clientCA, what: "client CA file")
        OpenSSLErrors.clear()
        guard let store = SSL_CTX_get_cert_store(ctx), let bio = BIO_new_file(policy.crlFile, "r") else {
            throw TLSError(.configuration, "cannot read the CRL file \(policy.crlFile)")
        }
        defer { BIO_free(bio) }
        var stale: [String] = []
        var count = 0
        while true {
            OpenSSLErrors.clear()
            guard let crl = PEM_read_bio_X509_CRL(bio, nil, nil, nil) else {
                let entries = OpenSSLErrors.drain()
                // The end of the file reads as "no start line"; anything else is a CRL that does not read.
                if entries.allSatisfy({ $0.is(PEM_R_NO_START_LINE, in: ERR_LIB_PEM) }) { break }
                throw TLSError(
                    .configuration,
                    "cannot read CRL \(count + 1) in \(policy.crlFile): \(OpenSSLErrors.describe(entries, fallback: "not a PEM CRL")) (nothing was loaded)"
                )
            }
            defer { X509_CRL_free(crl) }
            count += 1
            guard issuers.signed(crl) else {
                throw TLSError(
                    .configuration,
                    "CRL \(count) in \(policy.crlFile) is not signed by a CA in the client CA file \(clientCA): it would refuse every client (nothing was loaded)"
                )
            }
            guard X509_STORE_add_crl(store, crl) == 1 else {
                throw TLSError(
                    .configuration,
                    "cannot use CRL \(count) in \(policy.crlFile): \(OpenSSLErrors.describe(OpenSSLErrors.drain(), fallback: "rejected"))"
                )
            }
            if let next = X509_CRL_get0_nextUpdate(crl), X509_cmp_current_time(next) < 0 {
                stale.append("\(policy.crlFile): next update was \(Self.render(next))")
            }
        }
        guard count > 0 else {
            throw TLSError(.configuration, "no CRL in \(policy.crlFile) (expected PEM: -----BEGIN X509 CRL-----)")
        }
        let flags = UInt(X509_V_FLAG_CRL_CHECK) | (policy.checkWholeChain ? UInt(X509_V_FLAG_CRL_CHECK_ALL) : 0)
        try check(X509_STORE_set_flags(store, flags) == 1, "CRL checking")
        return stale
    }

    private static func render(_ time: UnsafePointer<ASN1_TIME>) -> String {
        guard let bio = BIO_new(BIO_s_mem()) else { return "?" }
        defer { BIO_free(bio) }
        _ = ASN1_TIME_print(bio, time)
        var buffer = [UInt8](repeating: 0, count: 64)
        let n = BIO_read(bio, &buffer, Int32(buffer.count))
        return n > 0 ? String(decoding: buffer[..<Int(n)], as: UTF8.self) : "?"
    }
}

/// The certificates of a PEM file (a CA file), owned: freed with this object.
private final class CertificateFile {
    private var certificates: [OpaquePointer] = []

    init(_ path: String, what: String) throws(TLSError) {
        OpenSSLErrors.clear()
        guard let bio = BIO_new_file(path, "r") else {
            throw TLSError(.configuration, "cannot read \(what) \(path)")
        }
        defer { BIO_free(bio) }
        while let certificate = PEM_read_bio_X509(bio, nil, nil, nil) {
            self.certificates.append(certificate)
        }
        OpenSSLErrors.clear()  // the end of the file reads as "no start line"
    }

    deinit {
        for certificate in self.certificates { X509_free(certificate) }
    }

    /// Whether one of these certificates is `crl`'s issuer by name and its key verifies the CRL's signature.
    func signed(_ crl: OpaquePointer) -> Bool {
        guard let issuer = X509_CRL_get_issuer(crl) else { return false }
        let signed = self.certificates.contains { certificate in
            X509_NAME_cmp(X509_get_subject_name(certificate), issuer) == 0
                && X509_get0_pubkey(certificate).map { X509_CRL_verify(crl, $0) == 1 } == true
        }
        OpenSSLErrors.clear()  // a failed verification leaves its reason, which the caller words itself
        return signed
    }
}
