internal import COpenSSL

// The options a context is built with: the TLS version, client authentication, and where a client finds its CAs.

extension TLSContext {
    /// The oldest TLS version a context accepts.
    public enum Version: String, Sendable, CaseIterable {
        case tls12 = "1.2"
        case tls13 = "1.3"

        var openSSLValue: Int32 {
            switch self {
            case .tls12: TLS1_2_VERSION
            case .tls13: TLS1_3_VERSION
            }
        }
    }
}

/// Spelled as before inside the package.
package typealias TLSVersion = TLSContext.Version

extension TLSContext {
    /// Whether a server asks clients for a certificate (mutual TLS).
    public enum ClientAuthentication: String, Sendable, CaseIterable {
        /// No client certificate is asked for.
        case none
        /// A certificate is asked for and verified if sent; clients without one are still served, unless the server
        /// has an allow list of client identities (which no absent certificate can match).
        case optional
        /// Clients without a valid certificate are refused in the handshake.
        case required
    }
}

/// Spelled as before inside the package.
package typealias ClientAuthentication = TLSContext.ClientAuthentication

extension TLSContext {
    /// Where a client finds the CAs it trusts.
    public enum TrustRoots: Sendable, Equatable {
        /// The system's trust store (`/etc/ssl/certs`).
        case system
        /// The CA certificates in a PEM file.
        case file(String)
    }
}

/// Spelled as before inside the package.
package typealias TrustRoots = TLSContext.TrustRoots
