import ArgumentParser
import CoreMetrics
import Foundation
import LengthEcho
import LengthEchoCore
import LengthEchoTLS
import Logging
import NIOCore
import Prometheus
import ServiceLifecycle
import Synchronization
import UnixSignals

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

@main
struct ServerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "server",
        abstract: "The length-echo server: answers each message with `<length> : <message>`.",
        discussion: """
            Prints `receive: <message>` for each message, as the original C server does (control bytes \
            escaped). SIGINT or SIGTERM drains: no new connections, messages already received are answered, \
            then it exits 0. With --tls, SIGHUP reloads the certificate, key and client CA for new connections.

            Every flag is also a key of the --config file (YAML; the keys are the long flag names, a repeatable \
            flag takes a list, a switch true or false) and an environment variable (LENGTH_ECHO_ and the name in \
            capitals, dashes as underscores: LENGTH_ECHO_MAX_CONNECTIONS; lists comma-separated). Flags win over \
            the environment, which wins over the file.
            """
    )

    @Option(
        name: .long,
        help: "A YAML file of settings, keyed by the long flag names (flags and LENGTH_ECHO_* variables win over it).")
    var config: String?

    @Flag(
        name: .customLong("check-config"),
        help: "Check the configuration (flags, environment, --config) as a start would, print it, and exit: 0 if valid."
    )
    var checkConfig = false

    @Option(name: .long, help: "An address to listen on; repeat for several. (default: 0.0.0.0 and ::)")
    var host: [String] = []

    @Option(name: .long, help: "The TCP port; 0 picks a free one and prints it.")
    var port: Int = 4000

    @Option(
        name: .long,
        help:
            "What ends each message and reply: nul (the original protocol) or line (for nc, telnet, openssl s_client)."
    )
    var framing: Framing = .nul

    @Option(name: .customLong("max-message"), help: "The largest message accepted, in bytes.")
    var maxMessage: Int = 1 << 20

    @Option(name: .customLong("idle-timeout"), help: "Seconds a connection may stay silent before it is closed.")
    var idleTimeout: Double = 60

    @Option(
        name: .customLong("message-timeout"),
        help: "Seconds a message may take from its first byte to its terminator, however steadily it arrives."
    )
    var messageTimeout: Double = 30

    @Option(name: .customLong("max-connections"), help: "Connections beyond this many are refused.")
    var maxConnections: Int = 10_000

    @Option(
        name: .customLong("max-connections-per-ip"),
        help: "Connections from one client address (after PROXY) beyond this many are refused, before any TLS work.")
    var maxConnectionsPerIP: Int?

    @Option(
        name: .customLong("allow-from"),
        help: "Serve only clients (after PROXY) in these ranges: an address or CIDR; repeat for several.")
    var allowFrom: [String] = []

    @Option(
        name: .customLong("deny-from"),
        help: "Refuse clients (after PROXY) in these ranges, closed before any TLS work; repeat for several.")
    var denyFrom: [String] = []

    @Option(name: .customLong("drain-timeout"), help: "Seconds to finish open messages on SIGINT/SIGTERM.")
    var drainTimeout: Double = 10

    @Option(name: .long, help: "Event-loop threads; the default is one per core.")
    var threads: Int = System.coreCount

    @Flag(
        name: .customLong("cpu-affinity"),
        help: """
            Pin each event loop to a CPU and give each new connection to the loop on the CPU that received it: \
            cheaper per connection where the network card spreads its receive queues over the CPUs (multi-queue \
            NICs, RPS); where one CPU receives everything, one loop gets every connection.
            """
    )
    var cpuAffinity = false

    @Flag(name: .long, help: "Speak TLS (from the system OpenSSL) instead of plaintext.")
    var tls = false

    @Option(name: .long, help: "With --tls: the certificate chain, PEM. (default: certs/server.pem)")
    var cert: String?

    @Option(
        name: .long, help: "With --tls: the certificate's private key, PEM, unencrypted. (default: certs/server.key)")
    var key: String?

    @Option(name: .customLong("client-ca"), help: "With --tls: the CA that signs client certificates (mutual TLS).")
    var clientCA: String?

    @Option(name: .customLong("client-auth"), help: "With --tls: none, optional or required.")
    var clientAuth: ClientAuthentication = .none

    @Option(name: .customLong("tls-min"), help: "With --tls: the oldest TLS version accepted, 1.2 or 1.3.")
    var tlsMin: TLSVersion = .tls12

    @Option(
        name: .customLong("allow-cn"),
        help: "With --client-auth: accept only client certificates with this common name; repeatable.")
    var allowCN: [String] = []

    @Option(
        name: .customLong("allow-dns"),
        help: "With --client-auth: ... or this DNS name in their subjectAltName; repeatable.")
    var allowDNS: [String] = []

    @Option(
        name: .customLong("allow-uri"),
        help: "With --client-auth: ... or this URI (a SPIFFE ID, say) in their subjectAltName; repeatable.")
    var allowURI: [String] = []

    @Option(
        name: .customLong("allow-spki-sha256"),
        help:
            "With --client-auth: ... or this SHA-256 of their DER SubjectPublicKeyInfo (hex, colons allowed); repeatable."
    )
    var allowSPKI: [String] = []

    @Option(
        name: .customLong("client-crl"),
        help:
            "With --client-auth: refuse client certificates revoked in these CRLs (PEM, one or more); SIGHUP reloads it."
    )
    var clientCRL: String?

    @Flag(
        name: .customLong("crl-check-all"),
        help: "With --client-crl: check every certificate of the chain, not only the client's.")
    var crlCheckAll = false

    @Flag(
        name: .customLong("crl-allow-stale"),
        help:
            "With --client-crl: accept a CRL past its next-update date (warned about) instead of refusing every client."
    )
    var crlAllowStale = false

    @Option(
        name: .customLong("tls-keylog"),
        help: """
            With --tls: append every connection's TLS secrets to FILE (NSS key log, mode 0600) so Wireshark or \
            tshark can decrypt a capture. It defeats the encryption: for debugging only.
            """
    )
    var tlsKeylog: String?

    @Flag(
        name: .customLong("alpn-required"),
        help: """
            With --tls: refuse clients that send no ALPN too (no_application_protocol alert); an ALPN list without \
            length-echo is always refused.
            """)
    var alpnRequired = false

    @Option(
        name: .customLong("handshake-rate"),
        help: """
            With --tls: TLS handshakes per second one client address may start (a bucket holding this many); over \
            it, connections are closed before any TLS work, logged at most once a second per address.
            """
    )
    var handshakeRate: Int?

    @Option(
        name: .customLong("reload-interval"),
        help: "With --tls: every this many seconds, read the certificate, key and client CA again if they changed.")
    var reloadInterval: Double?

    @Option(name: .customLong("handshake-timeout"), help: "With --tls: seconds a client has to finish its handshake.")
    var handshakeTimeout: Double = 10

    @Flag(
        name: .customLong("proxy-protocol"),
        help: """
            Behind HAProxy, nginx or another balancer: every connection must begin with a PROXY protocol header \
            (v1 or v2) and come from a --proxy-from address; the client the header names becomes the peer in \
            every log line. Needs --proxy-from.
            """
    )
    var proxyProtocol = false

    @Option(
        name: .customLong("proxy-from"),
        help: """
            With --proxy-protocol: an address or CIDR range (10.0.0.0/8, ::1) of the balancers trusted to send \
            PROXY headers; repeat for several. Required: a header from anyone else could claim to be any client, \
            so there is no trust-everyone default. Connections from other addresses are refused.
            """
    )
    var proxyFrom: [String] = []

    @Option(
        name: .customLong("proxy-timeout"), help: "With --proxy-protocol: seconds a connection has to send its header.")
    var proxyTimeout: Double = 5

    @Flag(name: .shortAndLong, help: "Do not print `receive:` lines.")
    var quiet = false

    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel: Logger.Level = .info

    @Option(
        name: .long,
        help: """
            Serve HTTP status on ADDR:PORT (only a port: 127.0.0.1): /healthz, /readyz (503 while draining or full) \
            and /metrics (Prometheus). Off by default.
            """
    )
    var status: String?

    @Option(
        name: .customLong("log-format"),
        help: "Diagnostics on stderr: text, or json (one object per line: time, level, message, metadata keys)."
    )
    var logFormat: LogFormat = .text

    /// The keys (long flag names) that set each of the library's settings, for its problems.
    static func keys(for setting: ServerConfiguration.Setting) -> [String] {
        switch setting {
        case .port: ["port"]
        case .maximumMessageLength: ["max-message"]
        case .idleTimeout: ["idle-timeout"]
        case .messageTimeout: ["message-timeout"]
        case .drainTimeout: ["drain-timeout"]
        case .handshakeTimeout: ["handshake-timeout"]
        case .maximumConnections: ["max-connections"]
        case .maximumConnectionsPerAddress: ["max-connections-per-ip"]
        case .handshakesPerSecondPerAddress: ["handshake-rate"]
        case .threads: ["threads"]
        case .addressPolicy: ["allow-from", "deny-from"]
        case .proxyProtocol: ["proxy-protocol"]
        case .proxyTrustedSources: ["proxy-from"]
        case .proxyHeaderTimeout: ["proxy-timeout"]
        case .tls: ["tls"]
        case .clientCA: ["client-ca"]
        case .clientAuthentication: ["client-auth"]
        case .allowedClients: ["allow-cn", "allow-dns", "allow-uri", "allow-spki-sha256"]
        case .revocation: ["client-crl"]
        }
    }

    /// What the merged command line, environment and file must be: values that parse, and keys that mean
    /// something only beside another (the library's configuration has no place for them otherwise). Every rule
    /// about the configuration itself is `ServerConfiguration.validate()`'s.
    func checkKeys() throws {
        if let interval = self.reloadInterval, !(interval.isFinite && interval > 0 && interval <= 7 * 24 * 3600) {
            throw ValidationError("--reload-interval must be more than 0 to 604800 seconds (a week)")
        }
        if !self.tls,
            self.cert != nil || self.key != nil || self.clientCA != nil || self.clientAuth != .none
                || self.reloadInterval != nil
        {
            throw ValidationError("--cert, --key, --client-ca, --client-auth and --reload-interval need --tls")
        }
        for (flag, ranges) in [
            ("--allow-from", self.allowFrom), ("--deny-from", self.denyFrom), ("--proxy-from", self.proxyFrom),
        ] {
            for range in ranges {
                if case .failure(let error) = AddressRange.parse(range) {
                    throw ValidationError("\(flag) \(range): \(error)")
                }
            }
        }
        if self.alpnRequired && !self.tls { throw ValidationError("--alpn-required needs --tls") }
        if self.tlsKeylog != nil && !self.tls { throw ValidationError("--tls-keylog needs --tls") }
        let identities =
            !self.allowCN.isEmpty || !self.allowDNS.isEmpty || !self.allowURI.isEmpty || !self.allowSPKI.isEmpty
        if identities && !self.tls {
            throw ValidationError("--allow-cn, --allow-dns, --allow-uri and --allow-spki-sha256 need --tls")
        }
        if self.clientCRL != nil && !self.tls { throw ValidationError("--client-crl needs --tls") }
        if (self.crlCheckAll || self.crlAllowStale) && self.clientCRL == nil {
            throw ValidationError("--crl-check-all and --crl-allow-stale need --client-crl")
        }
        for spki in self.allowSPKI where IdentityPolicy.digest(hex: spki) == nil {
            throw ValidationError("--allow-spki-sha256 \(spki): expected 64 hex digits (colons allowed)")
        }
        if self.handshakeRate != nil && !self.tls { throw ValidationError("--handshake-rate needs --tls") }
        if let status = self.status, Self.statusAddress(status) == nil {
            throw ValidationError("--status \(status): expected PORT, ADDR:PORT or [IPv6]:PORT")
        }
        if !self.proxyProtocol && !self.proxyFrom.isEmpty {
            throw ValidationError("--proxy-from needs --proxy-protocol")
        }
    }
}
