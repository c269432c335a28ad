internal import COpenSSL
import LengthEchoCore

/// Revocation: the client CRLs a server checks client certificates against.
public struct RevocationPolicy: Sendable, Equatable {
    /// PEM file with one or more CRLs.
    public var crlFile: String
    /// Check every certificate of the chain, not only the leaf (`X509_V_FLAG_CRL_CHECK_ALL`).
    public var checkWholeChain: Bool
    /// Accept a CRL past its next-update date (warned about) instead of refusing every client.
    public var allowStale: Bool

    public init(crlFile: String, checkWholeChain: Bool = false, allowStale: Bool = false) {
        self.crlFile = crlFile
        self.checkWholeChain = checkWholeChain
        self.allowStale = allowStale
    }
}

extension TLSContext {
    /// Loads the CRLs into the context's store and turns CRL checking on. Returns the CRLs past their
    /// next-update date (each as "FILE: next update DATE"), for the caller to warn about.
    func useCRLs(_ policy: RevocationPolicy, on ctx: OpaquePointer) throws(TLSError) -> [String] {
        try Self.checkReadable(policy.crlFile, what: "CRL file")
        OpenSSLErrors.clear()
        guard let store = SSL_CTX_get_cert_store(ctx), let bio = BIO_new_file(policy.crlFile, "r") else {
            throw TLSError(.configuration, "cannot read the CRL file \(policy.crlFile)")
        }
        defer { BIO_free(bio) }
        var stale: [String] = []
        var count = 0
        while let crl = PEM_read_bio_X509_CRL(bio, nil, nil, nil) {
            defer { X509_CRL_free(crl) }
            guard X509_STORE_add_crl(store, crl) == 1 else {
                throw TLSError(
                    .configuration,
                    "cannot use a CRL in \(policy.crlFile): \(OpenSSLErrors.describe(OpenSSLErrors.drain(), fallback: "rejected"))"
                )
            }
            count += 1
            if let next = X509_CRL_get0_nextUpdate(crl), X509_cmp_current_time(next) < 0 {
                stale.append("\(policy.crlFile): next update was \(Self.render(next))")
            }
        }
        OpenSSLErrors.clear()  // the end of the file reads as "no start line"
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
