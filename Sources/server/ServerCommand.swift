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
#elseif canImport(Darwin)
import Darwin
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
            """
    )

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
        help: "With --tls: refuse clients whose ALPN does not offer length-echo (no_application_protocol alert).")
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

    /// The largest values the flags take: beyond them a value is a typo or an attack on the process itself
    /// (a message limit that overflows, a timeout that overflows NIO's clock, more threads than can start).
    static let largestMessage = 1 << 30
    static let longestTimeout: Double = 7 * 24 * 3600
    static let mostThreads = 256

    func validate() throws {
        guard (0...65535).contains(self.port) else { throw ValidationError("--port must be 0...65535") }
        guard (0...Self.largestMessage).contains(self.maxMessage) else {
            throw ValidationError("--max-message must be 0...\(Self.largestMessage) (1 GiB)")
        }
        for (flag, value, zeroAllowed) in [
            ("--idle-timeout", self.idleTimeout, false), ("--message-timeout", self.messageTimeout, false),
            ("--drain-timeout", self.drainTimeout, true), ("--handshake-timeout", self.handshakeTimeout, false),
            ("--proxy-timeout", self.proxyTimeout, false),
            ("--reload-interval", self.reloadInterval ?? 1, false),
        ] {
            guard value.isFinite, zeroAllowed ? value >= 0 : value > 0, value <= Self.longestTimeout else {
                throw ValidationError(
                    "\(flag) must be \(zeroAllowed ? "0" : "more than 0") to \(Int(Self.longestTimeout)) seconds (a week)"
                )
            }
        }
        guard (1...10_000_000).contains(self.maxConnections) else {
            throw ValidationError("--max-connections must be 1...10000000")
        }
        guard (1...Self.mostThreads).contains(self.threads) else {
            throw ValidationError("--threads must be 1...\(Self.mostThreads)")
        }
        if !self.tls,
            self.cert != nil || self.key != nil || self.clientCA != nil || self.clientAuth != .none
                || self.reloadInterval != nil
        {
            throw ValidationError("--cert, --key, --client-ca, --client-auth and --reload-interval need --tls")
        }
        for (flag, ranges) in [("--allow-from", self.allowFrom), ("--deny-from", self.denyFrom)] {
            for range in ranges where AddressRange(range) == nil {
                throw ValidationError("\(flag) \(range): not an address or CIDR range (10.0.0.0/8, 192.0.2.7, ::1)")
            }
        }
        if let n = self.maxConnectionsPerIP, !(1...10_000_000).contains(n) {
            throw ValidationError("--max-connections-per-ip must be 1...10000000")
        }
        if self.alpnRequired && !self.tls { throw ValidationError("--alpn-required needs --tls") }
        if self.tlsKeylog != nil && !self.tls { throw ValidationError("--tls-keylog needs --tls") }
        let identities =
            !self.allowCN.isEmpty || !self.allowDNS.isEmpty || !self.allowURI.isEmpty || !self.allowSPKI.isEmpty
        if identities && self.clientAuth == .none {
            throw ValidationError(
                "--allow-cn, --allow-dns, --allow-uri and --allow-spki-sha256 need --client-auth optional or required")
        }
        if self.clientCRL != nil && self.clientAuth == .none {
            throw ValidationError("--client-crl needs --client-auth optional or required")
        }
        if (self.crlCheckAll || self.crlAllowStale) && self.clientCRL == nil {
            throw ValidationError("--crl-check-all and --crl-allow-stale need --client-crl")
        }
        for spki in self.allowSPKI where IdentityPolicy.digest(hex: spki) == nil {
            throw ValidationError("--allow-spki-sha256 \(spki): expected 64 hex digits (colons allowed)")
        }
        if let n = self.handshakeRate {
            guard self.tls else { throw ValidationError("--handshake-rate needs --tls") }
            guard (1...1_000_000).contains(n) else { throw ValidationError("--handshake-rate must be 1...1000000") }
        }
        if let status = self.status, Self.statusAddress(status) == nil {
            throw ValidationError("--status \(status): expected PORT, ADDR:PORT or [IPv6]:PORT")
        }
        if self.proxyProtocol && self.proxyFrom.isEmpty {
            throw ValidationError(
                "--proxy-protocol needs --proxy-from: the balancers' addresses (a header from anyone else would be believed)"
            )
        }
        if !self.proxyProtocol && !self.proxyFrom.isEmpty {
            throw ValidationError("--proxy-from needs --proxy-protocol")
        }
        for range in self.proxyFrom where AddressRange(range) == nil {
            throw ValidationError("--proxy-from \(range): not an address or CIDR range (10.0.0.0/8, 192.0.2.7, ::1)")
        }
        if self.clientCA != nil && self.clientAuth == .none {
            throw ValidationError("--client-ca needs --client-auth optional or required")
        }
        if self.clientCA == nil && self.clientAuth != .none {
            throw ValidationError(
                "--client-auth \(self.clientAuth.rawValue) needs --client-ca: the CA that signs client certificates")
        }
    }

    /// A key anyone else on the machine can read is no longer a secret: say so (and keep serving).
    private func checkKeyPermissions(console: Console) {
        let path = self.key ?? "certs/server.key"
        var info = stat()
        guard stat(path, &info) == 0 else { return }  // a missing key is reported by the TLS context
        if info.st_mode & 0o077 != 0 {
            console.say(
                .warning,
                "warning: the key \(path) is readable by "
                    + "\(info.st_mode & 0o007 != 0 ? "everyone" : "its group") (mode \(String(info.st_mode & 0o777, radix: 8))); "
                    + "chmod 600 it")
        }
        if info.st_uid != geteuid() {
            console.say(
                .warning,
                "warning: the key \(path) belongs to uid \(info.st_uid), not to this server's uid \(geteuid())")
        }
    }

    private func makeTLSContext() throws -> TLSContext {
        try TLSContext.server(
            certificateChain: self.cert ?? "certs/server.pem",
            privateKey: self.key ?? "certs/server.key",
            clientCA: self.clientCA,
            clientAuthentication: self.clientAuth,
            minimumVersion: self.tlsMin,
            requireALPN: self.alpnRequired,
            keyLog: self.tlsKeylog != nil,
            allowedClients: IdentityPolicy(
                commonNames: self.allowCN, dnsNames: self.allowDNS, uris: self.allowURI,
                publicKeySHA256: self.allowSPKI.compactMap(IdentityPolicy.digest(hex:))),
            revocation: self.clientCRL.map {
                RevocationPolicy(crlFile: $0, checkWholeChain: self.crlCheckAll, allowStale: self.crlAllowStale)
            }
        )
    }

    /// SIGHUP: read the certificate, key and client CA again (a renewal), for new connections. If they are
    /// not usable, say why and keep serving with the ones already loaded.
    private func reload(_ server: LengthEchoServer, console: Console, why: String = "SIGHUP") {
        guard self.tls else {
            console.say(.notice, "\(why): nothing to reload without --tls")
            return
        }
        do {
            let context = try self.makeTLSContext()
            server.replaceTLSContext(context)
            Counter(label: "length_echo_reloads_total", dimensions: [("result", "success")]).increment()
            console.say(.notice, "\(why): reloaded the certificate and key for new connections")
            Self.warnIfExpiring(context, console: console)
        } catch {
            Counter(label: "length_echo_reloads_total", dimensions: [("result", "failure")]).increment()
            console.say(.error, "\(why): kept the certificate already loaded: \(error)")
        }
    }

    func run() async throws {
        // Trapped first: a signal that arrives while the server starts is handled once it is up, never fatal.
        let signals = await UnixSignalsSequence(trapping: .sigint, .sigterm, .sighup)
        let (level, format) = (self.logLevel, self.logFormat)
        LoggingSystem.bootstrap { label in
            var handler = QueuedLogHandler(label: label, format: format)
            handler.logLevel = level
            return handler
        }
        defer { QueuedLogHandler.writer.flush() }
        let console = Console(format: format)
        var configuration = ServerConfiguration()
        if !self.host.isEmpty { configuration.hosts = self.host }
        configuration.port = self.port
        // Run by systemd: its notify socket, and the listening sockets it may pass (then nothing else is bound).
        let systemd = SystemdNotifier()
        do {
            if let sockets = try SocketActivation.listeningSockets() { configuration.listeningSockets = sockets }
        } catch {
            console.say(.error, "\(error)")
            throw ExitCode.failure
        }
        configuration.framing = self.framing
        configuration.maximumMessageLength = self.maxMessage
        configuration.idleTimeout = .fromSeconds(self.idleTimeout)
        configuration.messageTimeout = .fromSeconds(self.messageTimeout)
        configuration.maximumConnections = self.maxConnections
        configuration.drainTimeout = .fromSeconds(self.drainTimeout)
        configuration.threads = self.threads
        configuration.handshakeTimeout = .fromSeconds(self.handshakeTimeout)
        configuration.maximumConnectionsPerAddress = self.maxConnectionsPerIP
        configuration.handshakesPerSecondPerAddress = self.handshakeRate
        if !self.allowFrom.isEmpty || !self.denyFrom.isEmpty {
            configuration.addressPolicy = AddressPolicy(
                allow: self.allowFrom.compactMap(AddressRange.init), deny: self.denyFrom.compactMap(AddressRange.init))
        }
        if self.proxyProtocol {
            configuration.proxyProtocol = ProxyProtocolConfiguration(
                trustedSources: self.proxyFrom.compactMap(AddressRange.init),
                headerTimeout: .fromSeconds(self.proxyTimeout)
            )
        }
        if self.tls {
            self.checkKeyPermissions(console: console)
            if let path = self.tlsKeylog {
                do {
                    try TLSKeyLog.open(path)
                } catch {
                    console.say(.error, "\(error)")
                    throw ExitCode.failure
                }
                console.say(
                    .warning,
                    "warning: --tls-keylog: every connection's session keys go to \(path); anyone who reads it can decrypt the traffic (debugging only)"
                )
            }
            do {
                configuration.tls = try self.makeTLSContext()
            } catch {
                console.say(.error, "\(error)")
                if self.cert == nil { console.say(.error, "(make test certificates with scripts/gen-certs.sh)") }
                throw ExitCode.failure
            }
        }
        // Metrics: swift-metrics with swift-prometheus behind it, bootstrapped once, only when they are served.
        let registry = PrometheusCollectorRegistry()
        if self.status != nil {
            MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
            for result in ["success", "failure"] {
                Counter(label: "length_echo_reloads_total", dimensions: [("result", result)]).increment(by: 0)
            }
        }
        let connectionLines = ConnectionLines(format: format, level: level)
        configuration.connectionLog = { summary in connectionLines.write(summary) }
        var receiveLog: ReceiveLog?
        if !self.quiet {
            let log = ReceiveLog()
            receiveLog = log
            configuration.onMessage = { message, _ in log.print(message) }
        }

        let server: LengthEchoServer
        do {
            server = try await LengthEchoServer.start(configuration: configuration)
        } catch {
            console.say(.error, "\(error)\(Self.advice(for: error).map { "; \($0)" } ?? "")")
            throw ExitCode.failure
        }
        var statusServer: StatusServer?
        if let status = self.status, let (host, port) = Self.statusAddress(status) {
            do {
                statusServer = try await StatusServer.start(for: server, host: host, port: port) {
                    registry.emitToBuffer()
                }
            } catch {
                console.say(.error, "status port: \(error)")
                await server.shutdown()
                throw ExitCode.failure
            }
        }
        let addresses = server.localAddresses.map {
            LengthEchoError.format(host: $0.ipAddress ?? "?", port: $0.port ?? 0)
        }
        let security =
            self.tls
            ? "TLS \(self.tlsMin.rawValue)+"
                + (self.clientAuth == .none ? "" : ", client certificates \(self.clientAuth.rawValue)")
            : "plaintext"
        let framing = self.framing == .nul ? "" : ", \(self.framing.rawValue) framing"
        let proxy = self.proxyProtocol ? ", PROXY protocol from \(self.proxyFrom.joined(separator: " "))" : ""
        console.say(.notice, "listening on \(addresses.joined(separator: " and ")) (\(security)\(framing)\(proxy))")
        if let address = statusServer?.localAddress {
            console.say(
                .notice,
                "status on http://\(LengthEchoError.format(host: address.ipAddress ?? "?", port: address.port ?? 0))/ (healthz, readyz, metrics)"
            )
        }
        // The lifecycle, with swift-service-lifecycle: the server and its helpers as services of one group,
        // whose graceful shutdown (SIGTERM or SIGINT) drains the server last.
        let serving = "serving on \(addresses.joined(separator: " and ")) (\(security)\(framing)\(proxy))"
        var services: [any Service] = [DrainingServer(server: server)]
        if let context = configuration.tls {
            services.append(
                Repeating(every: .seconds(24 * 3600), now: true) {  // at start, then daily
                    Self.warnIfExpiring(server.currentTLSContext ?? context, console: console)
                })
        }
        if let interval = systemd.watchdogInterval {
            services.append(
                Repeating(every: interval, now: true) {  // pinged only while every event loop answers
                    await server.eventLoopsAnswer()
                    systemd.notify("WATCHDOG=1")
                })
        }
        if let seconds = self.reloadInterval, self.tls {
            let stamp = Mutex(self.certificateFilesStamp())
            services.append(
                Repeating(every: .seconds(seconds), now: false) {  // short-lived certificates
                    let now = self.certificateFilesStamp()
                    if stamp.withLock({ seen in
                        defer { seen = now }; return seen != now
                    }) {
                        self.reload(server, console: console, why: "the certificate files changed")
                    }
                })
        }
        var lifecycleLogger = Logger(label: "length-echo.lifecycle")
        lifecycleLogger.logLevel = max(level, .notice)
        let group = ServiceGroup(services: services, logger: lifecycleLogger)
        systemd.notify("READY=1\nSTATUS=\(serving)")

        // Signals: trapped since start-up (none is lost), handed to the group: SIGHUP reloads, the first SIGTERM
        // or SIGINT drains, a second one exits at once.
        let signalTask = Task {
            var draining = false
            for await signal in signals {
                switch signal {
                case .sighup where !draining:
                    systemd.reloading()
                    self.reload(server, console: console)
                    systemd.notify("READY=1\nSTATUS=\(serving)")
                case .sighup:
                    continue
                default:
                    guard !draining else {
                        console.say(.warning, "second signal, exiting now")
                        QueuedLogHandler.writer.flush()
                        Glibc.exit(130)
                    }
                    draining = true
                    let message =
                        "\(signal == .sigint ? "SIGINT" : "SIGTERM"), draining \(server.connectionCount) connections"
                    systemd.notify("STOPPING=1\nSTATUS=\(message)")
                    console.say(.notice, message)
                    await group.triggerGracefulShutdown()
                }
            }
        }
        defer { signalTask.cancel() }
        do {
            try await group.run()
        } catch {
            console.say(.error, "\(error)")
            await server.shutdown()
        }
        receiveLog?.flush()
        console.say(.notice, "stopped")
    }
}

extension ServerCommand {
    /// `PORT` (on 127.0.0.1), `ADDR:PORT` or `[IPv6]:PORT`; nil when it is none of them.
    static func statusAddress(_ text: String) -> (host: String, port: Int)? {
        func port(_ digits: Substring) -> Int? {
            guard let port = Int(digits), (0...65535).contains(port), digits.allSatisfy(\.isNumber) else { return nil }
            return port
        }
        if let only = port(Substring(text)) { return ("127.0.0.1", only) }
        if text.hasPrefix("["), let close = text.firstIndex(of: "]") {
            let rest = text[text.index(after: close)...]
            guard rest.hasPrefix(":"), let number = port(rest.dropFirst()) else { return nil }
            return (String(text[text.index(after: text.startIndex)..<close]), number)
        }
        guard let colon = text.lastIndex(of: ":"), !text[..<colon].contains(":"),
            let number = port(text[text.index(after: colon)...]), colon > text.startIndex
        else { return nil }
        return (String(text[..<colon]), number)
    }

    /// When each certificate file last changed (and its size), to notice a renewal.
    func certificateFilesStamp() -> [String] {
        [self.cert ?? "certs/server.pem", self.key ?? "certs/server.key", self.clientCA, self.clientCRL].compactMap {
            $0
        }.map { path in
            var info = stat()
            guard stat(path, &info) == 0 else { return "\(path): missing" }
            return "\(path): \(info.st_mtim.tv_sec).\(info.st_mtim.tv_nsec) \(info.st_size) \(info.st_ino)"
        }
    }

    /// A warning when the certificate expires within 14 days (or has expired), and about stale CRLs.
    static func warnIfExpiring(_ context: TLSContext, console: Console) {
        for stale in context.staleCRLs {
            console.say(
                .warning,
                context.revocation?.allowStale == true
                    ? "warning: the CRL is past its next-update date (\(stale)); accepted (--crl-allow-stale), renew it"
                    : "warning: the CRL is past its next-update date (\(stale)): every client is refused until it is renewed (or pass --crl-allow-stale)"
            )
        }
        guard let notAfter = context.certificateNotAfter else { return }
        let left = Double(notAfter) - Date().timeIntervalSince1970
        guard left < 14 * 24 * 3600 else { return }
        let when = ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: Double(notAfter)))
        console.say(
            .warning,
            left <= 0
                ? "warning: the certificate expired at \(when); renew it and send SIGHUP"
                : "warning: the certificate expires in \(Int(left / 86400)) days (\(when)); renew it and send SIGHUP")
    }

    /// What this program's user can do about a library error, in terms of its own flags.
    static func advice(for error: any Error) -> String? {
        guard case LengthEchoError.bindFailed(_, _, let reason) = error else { return nil }
        switch reason {
        case .addressInUse: return "stop the other server or pick another --port"
        case .noSuchAddress, .hostNotFound: return "check --host"
        case .permissionDenied, .familyNotSupported, .other: return nil
        }
    }
}

extension Logger.Level: @retroactive ExpressibleByArgument {}
extension Framing: ExpressibleByArgument {}
extension TLSVersion: ExpressibleByArgument {}
extension ClientAuthentication: ExpressibleByArgument {}
extension LogFormat: ExpressibleByArgument {}

/// The server's own lines (listening, reloads, shutdown): `server: ...` on stderr as text, or through the
/// log handler as JSON objects when the log format is JSON, so a log pipeline gets one kind of line.
struct Console: Sendable {
    let format: LogFormat
    private let logger: Logger

    init(format: LogFormat) {
        self.format = format
        var logger = Logger(label: "length-echo.server")
        logger.logLevel = .trace  // these lines are always shown
        self.logger = logger
    }

    func say(_ level: Logger.Level, _ text: String) {
        switch self.format {
        case .text: Standard.error("server: \(text)")
        case .json: self.logger.log(level: level, "\(text)")
        }
    }
}

/// The server as a service: it runs until the group shuts down gracefully, then drains (the status port
/// stays up through the drain and stops with it).
struct DrainingServer: Service {
    let server: LengthEchoServer

    func run() async throws {
        try? await gracefulShutdown()  // returns when the group shuts down (or is cancelled)
        await self.server.shutdown()
    }
}

/// Runs `body` every `interval` (first at once when `now`) until the group shuts down.
struct Repeating: Service {
    let interval: Duration
    let now: Bool
    let body: @Sendable () async -> Void

    init(every interval: Duration, now: Bool, _ body: @escaping @Sendable () async -> Void) {
        self.interval = interval
        self.now = now
        self.body = body
    }

    func run() async throws {
        try? await cancelWhenGracefulShutdown {
            if self.now { await self.body() }
            while !Task.isCancelled {
                try await Task.sleep(for: self.interval)
                await self.body()
            }
        }
    }
}
