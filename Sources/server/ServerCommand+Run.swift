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

extension ServerCommand {
    func run() async throws {
        // The environment and the file beneath the flags, then what the keys must be, before anything starts.
        let (command, sources) = try await self.merged()
        try command.checkKeys()
        if command.operations.checkConfig {
            try await command.checkConfiguration(sources)
        } else {
            try await command.serve(sources, original: self)
        }
    }

    /// Serves this (merged) configuration; `original` is the command line as parsed, which a reload merges with
    /// the environment and the file again.
    func serve(_ sources: ConfigurationSources, original: ServerCommand) async throws {
        // Trapped first: a signal that arrives while the server starts is handled once it is up, never fatal.
        let signals = await UnixSignalsSequence(trapping: .sigint, .sigterm, .sighup)
        let (level, format) = (self.operations.logLevel, self.operations.logFormat)
        QueuedLogHandler.level.store(level.rank, ordering: .relaxed)
        LoggingSystem.bootstrap { label in QueuedLogHandler(label: label, format: format) }
        defer { QueuedLogHandler.writer.flush() }
        let console = Console(format: format)
        if let limit = OpenFileLimit.raiseToHard(),
            let warning = OpenFileLimit.warning(maximumConnections: self.limits.maxConnections, limit: limit)
        {
            console.say(.warning, warning)
        }
        var configuration = self.libraryConfiguration()
        // Every rule about the configuration is the library's: each problem, named as the user wrote it.
        let problems = configuration.problems()
        guard problems.isEmpty else {
            for problem in problems { console.say(.error, problem.description { sources.name(of: $0) }) }
            throw ExitCode.failure
        }
        for name in sources.unknownEnvironment { console.say(.warning, "warning: \(name) names no setting; ignored") }
        // Run by systemd: its notify socket, and the listening sockets it may pass (then nothing else is bound).
        let systemd = SystemdNotifier()
        do {
            if let sockets = try SocketActivation.listeningSockets() { configuration.listeningSockets = sockets }
        } catch {
            console.say(.error, "\(error)")
            throw ExitCode.failure
        }
        for (flag, ranges) in [
            ("--allow-from", self.admission.allowFrom), ("--deny-from", self.admission.denyFrom),
            ("--proxy-from", self.proxy.proxyFrom),
        ] {
            for text in ranges {
                guard let range = AddressRange(text), range.hostBitsSet else { continue }
                console.say(.warning, "\(flag) \(text) has host bits set: it is taken as \(range)")
            }
        }
        if self.tlsOptions.tls {
            self.checkKeyPermissions(console: console)
            if let path = self.tlsOptions.tlsKeylog {
                do {
                    if let note = try TLSKeyLog.open(path) { console.say(.warning, "warning: \(note)") }
                } catch {
                    console.say(.error, "\(error)")
                    throw ExitCode.failure
                }
                console.say(
                    .warning,
                    "warning: --tls-keylog: every connection's session keys go to \(path); anyone who reads it can decrypt the traffic (debugging only)"
                )
            }
        }
        // Metrics: swift-metrics with swift-prometheus behind it, bootstrapped once, only when they are served.
        let registry = PrometheusCollectorRegistry()
        if self.operations.status != nil {
            MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
            for result in ["success", "failure"] {
                Counter(label: "length_echo_reloads_total", dimensions: [("result", result)]).increment(by: 0)
            }
        }
        let connectionLines = ConnectionLines(format: format)
        configuration.connectionLog = { summary in connectionLines.write(summary) }
        var receiveLog: ReceiveLog?
        if !self.operations.quiet {
            let log = ReceiveLog()
            receiveLog = log
            configuration.onMessage = { message, _ in log.print(message) }
        }

        let server: LengthEchoServer
        do {
            server = try await LengthEchoServer.start(configuration: configuration)
        } catch {
            console.say(.error, "\(error)\(Self.advice(for: error).map { "; \($0)" } ?? "")")
            if error is TLSError && self.tlsOptions.cert == nil {
                console.say(.error, "(make test certificates with scripts/gen-certs.sh)")
            }
            throw ExitCode.failure
        }
        var statusServer: StatusServer?
        if let status = self.operations.status, let (host, port) = Self.statusAddress(status) {
            do {
                statusServer = try await StatusServer.start(for: server, host: host, port: port) {
                    ServerMetrics.described(
                        registry.emitToBuffer(),
                        more: [
                            "length_echo_reloads_total": "Certificate reloads (SIGHUP, --reload-interval), by result."
                        ])
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
            self.tlsOptions.tls
            ? "TLS \(self.tlsOptions.tlsMin.rawValue)+"
                + (self.clients.clientAuth == .none ? "" : ", client certificates \(self.clients.clientAuth.rawValue)")
            : "plaintext"
        let framing = self.listening.framing == .nul ? "" : ", \(self.listening.framing.rawValue) framing"
        let proxy =
            self.proxy.proxyProtocol ? ", PROXY protocol from \(self.proxy.proxyFrom.joined(separator: " "))" : ""
        console.say(.notice, "listening on \(addresses.joined(separator: " and ")) (\(security)\(framing)\(proxy))")
        if let cpus = server.pinnedCPUs {
            console.say(
                .notice,
                "event loops pinned to CPUs \(cpus.map(String.init).joined(separator: ", ")); each new connection goes to the loop on the CPU that received it"
            )
        }
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
        if server.currentTLSContext != nil {
            services.append(
                Repeating(every: .seconds(24 * 3600), now: true) {  // at start, then daily
                    if let context = server.currentTLSContext { Self.warnIfExpiring(context, console: console) }
                })
        }
        if let interval = systemd.watchdogInterval {
            services.append(
                Repeating(every: interval, now: true) {  // pinged only while every event loop answers
                    await server.eventLoopsAnswer()
                    systemd.notify("WATCHDOG=1")
                })
        }
        let running = RunningCommand(self)
        if let seconds = self.tlsOptions.reloadInterval, self.tlsOptions.tls {
            let stamp = Mutex(self.certificateFilesStamp())
            services.append(
                Repeating(every: .seconds(seconds), now: false) {  // short-lived certificates
                    let now = self.certificateFilesStamp()
                    if stamp.withLock({ seen in
                        defer { seen = now }; return seen != now
                    }) {
                        _ = await Self.reload(
                            from: original, running: running, server, console: console,
                            why: "the certificate or configuration files changed")
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
                    let took = await Self.reload(
                        from: original, running: running, server, console: console, why: "SIGHUP")
                    systemd.notify(
                        "READY=1\nSTATUS=\(took ? serving : "reload failed; serving with the last good configuration")")
                case .sighup:
                    continue
                default:
                    guard !draining else {
                        console.say(.warning, "second signal, exiting now")
                        QueuedLogHandler.writer.flush()
                        Glibc.exit(130)
                    }
                    draining = true
                    let open = server.connectionCount
                    let message =
                        "\(signal == .sigint ? "SIGINT" : "SIGTERM"), draining \(open) connection\(open == 1 ? "" : "s")"
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

extension ServerCommand {
    /// The command's keys, mapped into the library's configuration: nothing checked here (the library's
    /// `problems()` is), nothing opened or started.
    func libraryConfiguration() -> ServerConfiguration {
        var configuration = ServerConfiguration()
        if !self.listening.host.isEmpty { configuration.hosts = self.listening.host }
        configuration.port = self.listening.port
        configuration.framing = self.listening.framing
        configuration.maximumMessageLength = self.limits.maxMessage
        configuration.idleTimeout = .fromSeconds(self.limits.idleTimeout)
        configuration.messageTimeout = .fromSeconds(self.limits.messageTimeout)
        configuration.maximumConnections = self.limits.maxConnections
        configuration.drainTimeout = .fromSeconds(self.limits.drainTimeout)
        configuration.threads = self.listening.threads
        configuration.cpuAffinity = self.listening.cpuAffinity
        configuration.handshakeTimeout = .fromSeconds(self.tlsOptions.handshakeTimeout)
        configuration.maximumConnectionsPerAddress = self.admission.maxConnectionsPerIP
        configuration.handshakesPerSecondPerAddress = self.admission.handshakeRate
        if !self.admission.allowFrom.isEmpty || !self.admission.denyFrom.isEmpty {
            configuration.addressPolicy = AddressPolicy(
                allow: self.admission.allowFrom.compactMap(AddressRange.init),
                deny: self.admission.denyFrom.compactMap(AddressRange.init))
        }
        if self.proxy.proxyProtocol {
            configuration.proxyProtocol = ProxyProtocolConfiguration(
                trustedSources: self.proxy.proxyFrom.compactMap(AddressRange.init),
                headerTimeout: .fromSeconds(self.proxy.proxyTimeout)
            )
        }
        if self.tlsOptions.tls { configuration.tls = self.tlsSettings() }
        return configuration
    }
}
