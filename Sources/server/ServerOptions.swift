import ArgumentParser
import LengthEcho
import Logging
import NIOCore

// The server's options, in the sections `server --help` shows them in. Each long name is also a key of the
// --config file and a LENGTH_ECHO_ environment variable (ServerCommand+Configuration.swift).

struct ListeningOptions: ParsableArguments {
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
}

struct LimitOptions: ParsableArguments {
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

    @Option(name: .customLong("drain-timeout"), help: "Seconds to finish open messages on SIGINT/SIGTERM.")
    var drainTimeout: Double = 10
}

struct AdmissionOptions: ParsableArguments {
    @Option(
        name: .customLong("allow-from"),
        help: "Serve only clients (after PROXY) in these ranges: an address or CIDR; repeat for several.")
    var allowFrom: [String] = []

    @Option(
        name: .customLong("deny-from"),
        help: "Refuse clients (after PROXY) in these ranges, closed before any TLS work; repeat for several.")
    var denyFrom: [String] = []

    @Option(
        name: .customLong("max-connections-per-ip"),
        help: "Connections from one client address (after PROXY) beyond this many are refused, before any TLS work.")
    var maxConnectionsPerIP: Int?

    @Option(
        name: .customLong("handshake-rate"),
        help: """
            With --tls: TLS handshakes per second one client address may start (a bucket holding this many); over \
            it, connections are closed before any TLS work, logged at most once a second per address.
            """
    )
    var handshakeRate: Int?
}

struct TLSOptions: ParsableArguments {
    @Flag(name: .long, help: "Speak TLS (from the system OpenSSL) instead of plaintext.")
    var tls = false

    @Option(name: .long, help: "With --tls: the certificate chain, PEM. (default: certs/server.pem)")
    var cert: String?

    @Option(
        name: .long, help: "With --tls: the certificate's private key, PEM, unencrypted. (default: certs/server.key)")
    var key: String?

    @Option(name: .customLong("tls-min"), help: "With --tls: the oldest TLS version accepted, 1.2 or 1.3.")
    var tlsMin: TLSVersion = .tls12

    @Option(name: .customLong("handshake-timeout"), help: "With --tls: seconds a client has to finish its handshake.")
    var handshakeTimeout: Double = 10

    @Flag(
        name: .customLong("alpn-required"),
        help: """
            With --tls: refuse clients that send no ALPN too (no_application_protocol alert); an ALPN list without \
            length-echo is always refused.
            """)
    var alpnRequired = false

    @Option(
        name: .customLong("tls-keylog"),
        help: """
            With --tls: append every connection's TLS secrets to FILE (NSS key log, mode 0600) so Wireshark or \
            tshark can decrypt a capture. It defeats the encryption: for debugging only.
            """
    )
    var tlsKeylog: String?

    @Option(
        name: .customLong("reload-interval"),
        help:
            "With --tls: every this many seconds, reload (as SIGHUP does) if the certificate, key, client CA, CRL or --config file changed."
    )
    var reloadInterval: Double?
}

struct ClientCertificateOptions: ParsableArguments {
    @Option(name: .customLong("client-ca"), help: "With --tls: the CA that signs client certificates (mutual TLS).")
    var clientCA: String?

    @Option(name: .customLong("client-auth"), help: "With --tls: none, optional or required.")
    var clientAuth: ClientAuthentication = .none

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
}

struct ProxyOptions: ParsableArguments {
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
}

struct OperationOptions: ParsableArguments {
    @Option(
        name: .long,
        help: "A YAML file of settings, keyed by the long flag names (flags and LENGTH_ECHO_* variables win over it).")
    var config: String?

    @Flag(
        name: .customLong("check-config"),
        help: "Check the configuration (flags, environment, --config) as a start would, print it, and exit: 0 if valid."
    )
    var checkConfig = false

    @Option(
        name: .long,
        help: """
            Serve HTTP status on ADDR:PORT (only a port: 127.0.0.1): /healthz, /readyz (503 while draining or full) \
            and /metrics (Prometheus). Off by default.
            """
    )
    var status: String?

    @Flag(name: .shortAndLong, help: "Do not print `receive:` lines.")
    var quiet = false

    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel: Logger.Level = .info

    @Option(
        name: .customLong("log-format"),
        help: "Diagnostics on stderr: text, or json (one object per line: time, level, message, metadata keys)."
    )
    var logFormat: LogFormat = .text
}
