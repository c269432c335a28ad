/// A TLS server, as settings: the files it reads and the policies it applies. A `TLSContext` is built from them
/// at start and at each reload (`TLSContext.server(_:)`); `ServerConfiguration.validate()` checks them first.
public struct TLSServerSettings: Sendable, Equatable {
    /// The certificate chain, PEM, leaf first.
    public var certificateChain = "certs/server.pem"
    /// The private key, PEM.
    public var privateKey = "certs/server.key"
    /// The CA that signs client certificates (needed when clients are asked for one).
    public var clientCA: String?
    /// Whether clients are asked for a certificate.
    public var clientAuthentication: TLSContext.ClientAuthentication = .none
    /// The oldest TLS version accepted.
    public var minimumVersion: TLSContext.Version = .tls12
    /// Which verified client certificates are accepted by identity; empty: any the client CA verifies.
    public var allowedClients = TLSContext.IdentityPolicy()
    /// The client CRLs checked, if any.
    public var revocation: TLSContext.RevocationPolicy?
    /// Whether a client must offer ALPN `length-echo` (else one offering none is served).
    public var requireALPN = false
    /// Whether every connection's secrets go to the process's key log (`TLSKeyLog`, opened by the program).
    public var keyLog = false

    /// The defaults: `certs/server.pem` and `certs/server.key` (what `scripts/gen-certs.sh` makes), no client
    /// certificates, TLS 1.2 and 1.3.
    public init() {}
}

extension TLSContext {
    /// A server context from `settings`.
    public static func server(_ settings: TLSServerSettings) throws(TLSError) -> TLSContext {
        try Self.server(
            certificateChain: settings.certificateChain,
            privateKey: settings.privateKey,
            clientCA: settings.clientCA,
            clientAuthentication: settings.clientAuthentication,
            minimumVersion: settings.minimumVersion,
            requireALPN: settings.requireALPN,
            keyLog: settings.keyLog,
            allowedClients: settings.allowedClients,
            revocation: settings.revocation
        )
    }
}
