internal import COpenSSL
import LengthEchoCore

/// Why a TLS connection failed, in the words a user needs: OpenSSL's verify result and error reason codes (never
/// its English text) turned into a sentence, and a cause the programs can give advice on.
extension TLSConnection {
    /// Turns a failed handshake into the sentence a user needs, identified by OpenSSL's reason codes.
    func explainHandshakeFailure(_ entries: [OpenSSLErrors.Entry]) -> TLSError {
        let verify = self.verifyResult
        let isClient = !self.isServer
        if verify != X509_V_OK, entries.contains(anyOf: SSL_R_CERTIFICATE_VERIFY_FAILED) {
            let reason = String(cString: X509_verify_cert_error_string(verify))
            let whose = isClient ? "the server's certificate" : "the client's certificate"
            let hint: String
            var cause: TLSError.Cause?
            switch Int32(verify) {
            case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY, X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN,
                X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT, X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT,
                X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
                cause = .untrustedPeerCertificate
                hint =
                    "unknown CA: \(whose) is not signed by a CA \(isClient ? "this client trusts" : "of the client CA file")"
            case X509_V_ERR_CERT_HAS_EXPIRED:
                hint = "\(whose) has expired"
            case X509_V_ERR_CERT_NOT_YET_VALID:
                hint = "\(whose) is not valid yet (check the clocks)"
            case X509_V_ERR_CERT_REVOKED:
                hint = "\(whose) is revoked"
            case X509_V_ERR_CRL_HAS_EXPIRED:
                hint = "the CRL is past its next-update date: renew it (no client is served until then)"
            case X509_V_ERR_UNABLE_TO_GET_CRL:
                hint = "there is no CRL from the issuer of \(whose)"
            case X509_V_ERR_APPLICATION_VERIFICATION:
                cause = .identityRefused
                hint =
                    isClient
                    ? "the server's public key is not one this client pins: \(self.refusedIdentity ?? "?")"
                    : "the client's certificate is not one this server allows: \(self.refusedIdentity ?? "?")"
            case X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH:
                cause = .wrongHost
                let names = self.peerNames.map { Escaping.printable(Array($0.utf8)) }
                let covers = names.isEmpty ? "no names" : names.joined(separator: ", ")
                hint = "wrong host: \(whose) is for \(covers), not \(self.expectedHost ?? "?")"
            default:
                hint = "\(whose) did not verify"
            }
            return TLSError(
                .verification(code: Int32(verify)), "TLS handshake failed: \(hint) (\(reason))", cause: cause)
        }
        let (text, cause) = self.explain(entries)
        return TLSError(.handshake, "TLS handshake failed: " + text, cause: cause)
    }

    /// A failure after the handshake, in the same terms.
    func explainFailure(_ entries: [OpenSSLErrors.Entry]) -> TLSError {
        let text = OpenSSLErrors.describe(entries, fallback: "the peer closed the connection")
        if !self.isServer && self.hasCertificate && entries.contains(anyOf: SSL_R_SSLV3_ALERT_HANDSHAKE_FAILURE) {
            // A TLS 1.3 server checks the client's certificate after the client has finished its handshake: a
            // handshake_failure alert then is a certificate that verified but is not an identity it allows (other
            // refusals have alerts of their own: unknown CA, revoked, expired).
            return TLSError(
                .protocolError,
                "TLS error: the server refused our client certificate: not an identity it allows, most likely (\(text))",
                cause: .ourCertificateRefused)
        }
        let (explained, cause) = self.explain(entries)
        return TLSError(.protocolError, "TLS error: " + explained, cause: cause)
    }

    private func explain(_ entries: [OpenSSLErrors.Entry]) -> (String, TLSError.Cause?) {
        let text = OpenSSLErrors.describe(entries, fallback: "the peer closed the connection")
        let isClient = !self.isServer
        if entries.contains(anyOf: SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED) {
            return ("the server requires a client certificate (\(text))", .clientCertificateRequired)
        }
        if isClient && self.hasCertificate && entries.contains(anyOf: SSL_R_SSLV3_ALERT_HANDSHAKE_FAILURE) {
            // A TLS 1.2 server checks the client's certificate during the handshake.
            return (
                "the server refused the handshake: our client certificate may not be an identity it allows, or there is no cipher in common (\(text))",
                .ourCertificateRefused
            )
        }
        if isClient && !self.hasCertificate && entries.contains(anyOf: SSL_R_SSLV3_ALERT_HANDSHAKE_FAILURE) {
            // TLS 1.2 servers say only "handshake failure" when a required client certificate is missing.
            return (
                "the server refused the handshake: it may require a client certificate, or there is no cipher in common (\(text))",
                .clientCertificateMaybeRequired
            )
        }
        if entries.contains(anyOf: SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE) {
            return ("the client sent no certificate, and this server requires one (\(text))", nil)
        }
        if entries.contains(anyOf: SSL_R_TLSV1_ALERT_UNKNOWN_CA, SSL_R_SSLV3_ALERT_BAD_CERTIFICATE) {
            // unknown_ca names the cause; bad_certificate does not (OpenSSL sends it for a name that does not match,
            // among others): say only what is known.
            let unknownCA = entries.contains(anyOf: SSL_R_TLSV1_ALERT_UNKNOWN_CA)
            let server =
                unknownCA
                ? "the client refused our certificate: it does not trust the CA that signed it (\(text))"
                : "the client refused our certificate (bad_certificate: a name it did not expect, say) (\(text))"
            return (
                isClient ? "the server does not trust our client certificate (\(text))" : server, .ourCertificateRefused
            )
        }
        if entries.contains(
            anyOf: SSL_R_TLSV1_ALERT_PROTOCOL_VERSION, SSL_R_UNSUPPORTED_PROTOCOL, SSL_R_NO_PROTOCOLS_AVAILABLE)
        {
            return ("no TLS version in common with the peer (\(text))", .noSharedVersion)
        }
        if entries.contains(anyOf: SSL_R_SSLV3_ALERT_CERTIFICATE_REVOKED) {
            return ("the server says our client certificate is revoked (\(text))", .ourCertificateRefused)
        }
        if entries.contains(anyOf: SSL_R_TLSV1_ALERT_NO_APPLICATION_PROTOCOL) {
            return ("the server requires ALPN \(ALPN.protocolName), which was not offered (\(text))", nil)
        }
        if !isClient && entries.contains(anyOf: SSL_R_NO_APPLICATION_PROTOCOL) {
            return (
                "the client's ALPN did not offer \(ALPN.protocolName), the one protocol this server speaks (\(text))",
                nil
            )
        }
        if !isClient && entries.contains(anyOf: SSL_R_CALLBACK_FAILED) {
            // The one ClientHello callback: ALPN required, and the client sent none.
            return ("the client sent no ALPN, and this server requires \(ALPN.protocolName) (\(text))", nil)
        }
        if entries.contains(anyOf: SSL_R_NO_SHARED_CIPHER, SSL_R_NO_CIPHERS_AVAILABLE) {
            return ("no cipher in common with the peer (\(text))", .noSharedCipher)
        }
        if entries.contains(anyOf: SSL_R_WRONG_VERSION_NUMBER, SSL_R_PACKET_LENGTH_TOO_LONG, SSL_R_HTTP_REQUEST) {
            return (
                isClient
                    ? "the server did not speak TLS: is it a plaintext server? (\(text))"
                    : "the client did not speak TLS (\(text))",
                .peerNotTLS
            )
        }
        return (text, nil)
    }
}
