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
            then it exits 0. SIGHUP reloads the configuration, checked in full first: the TLS files and policies, \
            the address rules, the limits and the timeouts apply to new connections, the log level at once; other \
            changes are named as needing a restart.

            Every flag is also a key of the --config file (YAML; the keys are the long flag names, a repeatable \
            flag takes a list, a switch true or false) and an environment variable (LENGTH_ECHO_ and the name in \
            capitals, dashes as underscores: LENGTH_ECHO_MAX_CONNECTIONS; lists comma-separated). Flags win over \
            the environment, which wins over the file.
            """,
        version: LengthEchoRelease.version
    )

    @OptionGroup(title: "Listening")
    var listening: ListeningOptions

    @OptionGroup(title: "Limits and timeouts")
    var limits: LimitOptions

    @OptionGroup(title: "Who may connect")
    var admission: AdmissionOptions

    @OptionGroup(title: "TLS")
    var tlsOptions: TLSOptions

    @OptionGroup(title: "Client certificates and policy")
    var clients: ClientCertificateOptions

    @OptionGroup(title: "PROXY protocol (behind a balancer)")
    var proxy: ProxyOptions

    @OptionGroup(title: "Operations: configuration, status, logs")
    var operations: OperationOptions

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
        if let interval = self.tlsOptions.reloadInterval,
            !(interval.isFinite && interval > 0 && interval <= 7 * 24 * 3600)
        {
            throw ValidationError("--reload-interval must be more than 0 to 604800 seconds (a week)")
        }
        if !self.tlsOptions.tls,
            self.tlsOptions.cert != nil || self.tlsOptions.key != nil || self.clients.clientCA != nil
                || self.clients.clientAuth != .none
                || self.tlsOptions.reloadInterval != nil
        {
            throw ValidationError("--cert, --key, --client-ca, --client-auth and --reload-interval need --tls")
        }
        for (flag, ranges) in [
            ("--allow-from", self.admission.allowFrom), ("--deny-from", self.admission.denyFrom),
            ("--proxy-from", self.proxy.proxyFrom),
        ] {
            for range in ranges {
                if case .failure(let error) = AddressRange.parse(range) {
                    throw ValidationError("\(flag) \(range): \(error)")
                }
            }
        }
        if self.tlsOptions.alpnRequired && !self.tlsOptions.tls { throw ValidationError("--alpn-required needs --tls") }
        if self.tlsOptions.tlsKeylog != nil && !self.tlsOptions.tls {
            throw ValidationError("--tls-keylog needs --tls")
        }
        let identities =
            !self.clients.allowCN.isEmpty || !self.clients.allowDNS.isEmpty || !self.clients.allowURI.isEmpty
            || !self.clients.allowSPKI.isEmpty
        if identities && !self.tlsOptions.tls {
            throw ValidationError("--allow-cn, --allow-dns, --allow-uri and --allow-spki-sha256 need --tls")
        }
        if self.clients.clientCRL != nil && !self.tlsOptions.tls { throw ValidationError("--client-crl needs --tls") }
        if (self.clients.crlCheckAll || self.clients.crlAllowStale) && self.clients.clientCRL == nil {
            throw ValidationError("--crl-check-all and --crl-allow-stale need --client-crl")
        }
        for spki in self.clients.allowSPKI where IdentityPolicy.digest(hex: spki) == nil {
            throw ValidationError("--allow-spki-sha256 \(spki): expected 64 hex digits (colons allowed)")
        }
        if self.admission.handshakeRate != nil && !self.tlsOptions.tls {
            throw ValidationError("--handshake-rate needs --tls")
        }
        if let status = self.operations.status, Self.statusAddress(status) == nil {
            throw ValidationError("--status \(status): expected PORT, ADDR:PORT or [IPv6]:PORT")
        }
        if !self.proxy.proxyProtocol && !self.proxy.proxyFrom.isEmpty {
            throw ValidationError("--proxy-from needs --proxy-protocol")
        }
    }
}
