internal import COpenSSL

/// ALPN: the server speaks `length-echo` and refuses a client whose ALPN list does not offer it (with the
/// `no_application_protocol` alert, as RFC 7301 section 3.2 says it SHALL); a client that sends no ALPN at all is
/// served unless ALPN is required. The client always sends `length-echo`. A shared :443 front (nginx
/// `ssl_preread`, HAProxy) can route on it.
package enum ALPN {
    /// The protocol name length-echo uses in ALPN.
    package static let protocolName = "length-echo"

    /// `protocolName` in ALPN's wire form (a length byte, then the name), in storage that lives as long as the
    /// process: OpenSSL's selection callback returns a pointer into it. Written once, then only read: safe to
    /// share.
    nonisolated(unsafe) static let wire: UnsafeMutableBufferPointer<UInt8> = {
        let bytes = [UInt8(protocolName.utf8.count)] + Array(protocolName.utf8)
        let storage = UnsafeMutableBufferPointer<UInt8>.allocate(capacity: bytes.count)
        _ = storage.initialize(from: bytes)
        return storage
    }()
}

extension TLSContext {
    /// Server role: speaks `length-echo`; a client that offers only other protocols, or (with `required`) no ALPN
    /// at all, gets the `no_application_protocol` alert. Also installs the ClientHello callback (see
    /// `serverClientHello`), which OpenSSL allows one of per context.
    func offerALPN(required: Bool, on ctx: OpaquePointer) {
        SSL_CTX_set_alpn_select_cb(ctx, alpnSelect, nil)
        SSL_CTX_set_client_hello_cb(ctx, serverClientHello, required ? UnsafeMutableRawPointer(bitPattern: 1) : nil)
    }

    /// Client role: sends `length-echo`.
    func sendALPN(on ctx: OpaquePointer) throws(TLSError) {
        // SSL_CTX_set_alpn_protos returns 0 on success.
        try check(SSL_CTX_set_alpn_protos(ctx, ALPN.wire.baseAddress, UInt32(ALPN.wire.count)) == 0, "ALPN")
    }
}

/// Picks `length-echo` from what the client offers; a list without it fails the handshake with
/// `no_application_protocol` (RFC 7301 3.2), whether or not ALPN is required.
private func alpnSelect(
    _ ssl: OpaquePointer?,
    _ out: UnsafeMutablePointer<UnsafePointer<UInt8>?>?,
    _ outLength: UnsafeMutablePointer<UInt8>?,
    _ offered: UnsafePointer<UInt8>?,
    _ offeredLength: UInt32,
    _ arg: UnsafeMutableRawPointer?
) -> Int32 {
    var selected: UnsafeMutablePointer<UInt8>?
    if SSL_select_next_proto(
        &selected, outLength, ALPN.wire.baseAddress, UInt32(ALPN.wire.count), offered, offeredLength)
        == OPENSSL_NPN_NEGOTIATED
    {
        out?.pointee = UnsafePointer(selected)
        return SSL_TLSEXT_ERR_OK
    }
    return SSL_TLSEXT_ERR_ALERT_FATAL
}

/// The server's ClientHello callback, before any cipher is chosen:
/// - a client that offers TLS 1.3 gets the server's TLS 1.3 suite preference (AES-128-GCM first where the CPU has
///   AES instructions, else ChaCha20), where OpenSSL would follow the client's (its default puts AES-256 first,
///   about 7% more server CPU per handshake); TLS 1.2 keeps Mozilla's client preference;
/// - with ALPN required (`arg` set), a ClientHello without the ALPN extension is refused with
///   `no_application_protocol` (OpenSSL calls the ALPN callback only for a client that sent ALPN).
private func serverClientHello(
    _ ssl: OpaquePointer?, _ alert: UnsafeMutablePointer<Int32>?, _ arg: UnsafeMutableRawPointer?
) -> Int32 {
    var data: UnsafePointer<UInt8>?
    var length = 0
    if SSL_client_hello_get0_ext(ssl, 43, &data, &length) == 1, let data, length >= 1 {  // supported_versions
        let versions = UnsafeBufferPointer(start: data + 1, count: min(Int(data[0]), length - 1))
        if stride(from: 0, to: versions.count - 1, by: 2).contains(where: { versions[$0] == 3 && versions[$0 + 1] == 4 }
        ) {
            _ = SSL_set_options(ssl, shim_SSL_OP_CIPHER_SERVER_PREFERENCE())
        }
    }
    guard arg != nil else { return SSL_CLIENT_HELLO_SUCCESS }
    if SSL_client_hello_get0_ext(
        ssl, UInt32(TLSEXT_TYPE_application_layer_protocol_negotiation), &data, &length) == 1
    {
        return SSL_CLIENT_HELLO_SUCCESS
    }
    alert?.pointee = TLS1_AD_NO_APPLICATION_PROTOCOL
    return SSL_CLIENT_HELLO_ERROR
}
