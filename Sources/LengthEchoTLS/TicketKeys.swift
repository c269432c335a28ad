internal import COpenSSL
import Synchronization

/// The session-ticket keys of one server context, rotated: tickets are issued under the current key, which
/// is replaced once it is `lifetime` old, and accepted under the current or the previous one (a ticket from
/// before the last rotation is renewed). A key therefore protects tickets for at most twice its lifetime,
/// rather than for the life of the process.
final class TicketKeys: Sendable {
    struct Key: Sendable {
        let name: [UInt8]
        let cipherKey: [UInt8]
        let macKey: [UInt8]
        let created: ContinuousClock.Instant
    }

    let lifetime: Duration
    private let keys: Mutex<(current: Key, previous: Key?)>
    /// AES-256-CBC fetched from the provider once: `EVP_aes_256_cbc()` would fetch it again on every ticket.
    /// Immutable and owned here (freed in deinit); OpenSSL only reads it.
    nonisolated(unsafe) let cipher: OpaquePointer

    init?(lifetime: Duration) {
        guard let first = Self.random(), let cipher = EVP_CIPHER_fetch(nil, "AES-256-CBC", nil) else { return nil }
        self.lifetime = lifetime
        self.keys = Mutex((first, nil))
        self.cipher = cipher
    }

    deinit {
        EVP_CIPHER_free(self.cipher)
    }

    private static func random() -> Key? {
        var bytes = [UInt8](repeating: 0, count: 16 + 32 + 32)
        guard RAND_bytes(&bytes, Int32(bytes.count)) == 1 else { return nil }
        return Key(
            name: Array(bytes[0..<16]),
            cipherKey: Array(bytes[16..<48]),
            macKey: Array(bytes[48..<80]),
            created: .now
        )
    }

    /// The key to issue a ticket under, rotating first if the current one is too old.
    func forIssuing() -> Key {
        self.keys.withLock { keys in
            if keys.current.created.duration(to: .now) >= self.lifetime, let next = Self.random() {
                keys = (next, keys.current)
            }
            return keys.current
        }
    }

    /// The key a ticket named `name` was issued under, and whether it is still the current one.
    func forAccepting(name: [UInt8]) -> (key: Key, current: Bool)? {
        self.keys.withLock { keys in
            if keys.current.name == name { return (keys.current, true) }
            if let previous = keys.previous, previous.name == name { return (previous, false) }
            return nil
        }
    }

    /// Rotates now (tests; a deployment rotates by age).
    func rotate() {
        guard let next = Self.random() else { return }
        self.keys.withLock { keys in keys = (next, keys.current) }
    }
}

/// OpenSSL's ticket key callback: finds the context's `TicketKeys` in its application data.
let ticketKeyCallback:
    @convention(c) (
        OpaquePointer?, UnsafeMutablePointer<UInt8>?, UnsafeMutablePointer<UInt8>?, OpaquePointer?, OpaquePointer?,
        Int32
    ) -> Int32 = { ssl, keyName, iv, cipherContext, macContext, encrypt in
        guard let ssl, let keyName, let iv, let cipherContext, let macContext,
            let raw = SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), ExDataIndex.ticketKeys)
        else { return -1 }
        let keys = Unmanaged<TicketKeys>.fromOpaque(raw).takeUnretainedValue()
        if encrypt == 1 {
            let key = keys.forIssuing()
            guard RAND_bytes(iv, 16) == 1 else { return -1 }
            for index in 0..<16 { keyName[index] = key.name[index] }
            guard EVP_EncryptInit_ex(cipherContext, keys.cipher, nil, key.cipherKey, iv) == 1,
                setMACKey(key.macKey, on: macContext)
            else { return -1 }
            return 1
        }
        // 0: not ours (an old or foreign ticket): a full handshake. 1: valid, no new ticket. 2: valid, and issue a
        // fresh ticket: always in TLS 1.3, whose clients use each ticket once (RFC 8446 C.4; with a callback,
        // OpenSSL 3.0 sends a ticket after a resumption only for 2), and in TLS 1.2 for a ticket under the
        // previous key.
        guard let (key, current) = keys.forAccepting(name: Array(UnsafeBufferPointer(start: keyName, count: 16))) else {
            return 0
        }
        guard setMACKey(key.macKey, on: macContext),
            EVP_DecryptInit_ex(cipherContext, keys.cipher, nil, key.cipherKey, iv) == 1
        else { return -1 }
        return current && SSL_version(ssl) != TLS1_3_VERSION ? 1 : 2
    }

/// HMAC-SHA256 with `key`, as the ticket's MAC.
private func setMACKey(_ key: [UInt8], on macContext: OpaquePointer) -> Bool {
    key.withUnsafeBytes { keyBytes in
        "key".withCString { keyName in
            "digest".withCString { digestName in
                "SHA256".withCString { digest in
                    var parameters = [
                        OSSL_PARAM_construct_octet_string(
                            keyName, UnsafeMutableRawPointer(mutating: keyBytes.baseAddress), keyBytes.count),
                        OSSL_PARAM_construct_utf8_string(digestName, UnsafeMutablePointer(mutating: digest), 0),
                        OSSL_PARAM_construct_end(),
                    ]
                    return EVP_MAC_CTX_set_params(macContext, &parameters) == 1
                }
            }
        }
    }
}
