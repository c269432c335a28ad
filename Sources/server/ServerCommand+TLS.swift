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

/// The TLS side of the command: the context from the flags, the key's permissions, reloads, expiry.
extension ServerCommand {
    func checkKeyPermissions(console: Console) {
        let path = self.tlsOptions.key ?? "certs/server.key"
        var info = stat()
        guard stat(path, &info) == 0 else { return }  // a missing key is reported by the TLS context
        // Readable by everyone, or by a group this server is not in, is a warning; a group of its own (root-owned,
        // mode 0640, group length-echo: the shipped unit's way) is not.
        let groupReads = info.st_mode & 0o070 != 0 && !Self.inGroup(info.st_gid)
        if info.st_mode & 0o007 != 0 || groupReads {
            console.say(
                .warning,
                "warning: the key \(path) is readable by "
                    + "\(info.st_mode & 0o007 != 0 ? "everyone" : "group \(info.st_gid), which this server is not in") "
                    + "(mode \(String(info.st_mode & 0o777, radix: 8))); chmod 600 it")
        }
        if info.st_uid != geteuid() && info.st_uid != 0 {
            console.say(
                .warning,
                "warning: the key \(path) belongs to uid \(info.st_uid), not to this server's uid \(geteuid()) or root")
        }
    }

    /// Whether this process runs with group `gid`, as its own or a supplementary group.
    private static func inGroup(_ gid: gid_t) -> Bool {
        if gid == getegid() { return true }
        let count = getgroups(0, nil)
        guard count > 0 else { return false }
        var groups = [gid_t](repeating: 0, count: Int(count))
        let read = getgroups(count, &groups)
        return read > 0 && groups.prefix(Int(read)).contains(gid)
    }

    /// The TLS flags, mapped into the library's settings (which `ServerConfiguration.validate()` checks).
    func tlsSettings() -> TLSServerSettings {
        var settings = TLSServerSettings()
        if let cert = self.tlsOptions.cert { settings.certificateChain = cert }
        if let key = self.tlsOptions.key { settings.privateKey = key }
        settings.clientCA = self.clients.clientCA
        settings.clientAuthentication = self.clients.clientAuth
        settings.minimumVersion = self.tlsOptions.tlsMin
        settings.requireALPN = self.tlsOptions.alpnRequired
        settings.keyLog = self.tlsOptions.tlsKeylog != nil
        settings.allowedClients = IdentityPolicy(
            commonNames: self.clients.allowCN, dnsNames: self.clients.allowDNS, uris: self.clients.allowURI,
            publicKeySHA256: self.clients.allowSPKI.compactMap(IdentityPolicy.digest(hex:)))
        settings.revocation = self.clients.clientCRL.map {
            RevocationPolicy(
                crlFile: $0, checkWholeChain: self.clients.crlCheckAll, allowStale: self.clients.crlAllowStale)
        }
        return settings
    }

    /// The keys a reload applies to new connections through a new TLS context.
    static let tlsReloadableKeys: Set<String> = [
        "cert", "key", "client-ca", "client-auth", "tls-min", "allow-cn", "allow-dns", "allow-uri",
        "allow-spki-sha256", "client-crl", "crl-check-all", "crl-allow-stale", "alpn-required",
    ]

    /// The keys a reload applies in the program itself: the log level, for every line after the reload.
    static let programReloadableKeys: Set<String> = ["log-level"]

    /// The keys a reload applies to new connections through the library (`LengthEchoServer.apply`).
    static var serverReloadableKeys: Set<String> {
        Set(LengthEchoServer.reloadableSettings.flatMap { Self.keys(for: $0) })
    }

    /// SIGHUP (and `--reload-interval`): the configuration is built again from `original`'s flags, the environment
    /// and the file, and checked in full (the keys, the library's rules, the TLS files) before anything changes.
    /// Then new connections get the new TLS context (a renewed certificate, a new CA, CRL or allow list); a changed
    /// key that a running server cannot take is named, and its old value keeps serving. If anything is wrong,
    /// nothing changes: the last good configuration keeps serving and one line says why. Returns whether it took;
    /// `running` is the configuration serving, which it replaces.
    static func reload(
        from original: ServerCommand, running: RunningCommand, _ server: LengthEchoServer, console: Console, why: String
    ) async -> Bool {
        func failed(_ reason: String) -> Bool {
            Counter(label: "length_echo_reloads_total", dimensions: [("result", "failure")]).increment()
            console.say(.error, "\(why): reload failed, the last good configuration keeps serving: \(reason)")
            return false
        }
        let current = running.value.withLock { $0 }
        let fresh: ServerCommand
        let sources: ConfigurationSources
        do {
            (fresh, sources) = try await original.merged()
            try fresh.checkKeys()
        } catch let error as ValidationError {
            return failed(error.message)
        } catch {
            return failed("\(error)")
        }
        if let problem = fresh.libraryConfiguration().problems().first {
            return failed(problem.description { sources.name(of: $0) })
        }
        var context: TLSContext?
        if current.tlsOptions.tls && fresh.tlsOptions.tls {
            do {
                context = try TLSContext.server(fresh.tlsSettings())
            } catch {
                return failed("\(error)")
            }
        }
        let live = Self.serverReloadableKeys.union(Self.programReloadableKeys).union(
            current.tlsOptions.tls && fresh.tlsOptions.tls ? Self.tlsReloadableKeys : [])
        let changed = Self.keys.filter { $0.show(fresh) != $0.show(current) }
        // What serves from now on: the live keys' new values, the rest as they were.
        var next = current
        for key in changed where live.contains(key.name) { key.copy(&next, fresh) }
        do {
            try server.apply(next.libraryConfiguration())
        } catch {
            return failed(error.description { sources.name(of: $0) })
        }
        if let context { server.replaceTLSContext(context) }
        running.value.withLock { $0 = next }
        QueuedLogHandler.level.store(next.operations.logLevel.rank, ordering: .relaxed)
        Counter(label: "length_echo_reloads_total", dimensions: [("result", "success")]).increment()
        for key in changed where !live.contains(key.name) {
            console.say(.warning, "\(why): \(key.name) changed: restart to apply (\(key.show(current)) keeps serving)")
        }
        let applied = changed.filter { live.contains($0.name) }.map(\.name)
        console.say(
            .notice,
            "\(why): reloaded\(context == nil ? "" : " the certificate and key")"
                + (applied.isEmpty ? "" : ", \(applied.joined(separator: ", "))") + " for new connections")
        if let context { Self.warnIfExpiring(context, console: console) }
        return true
    }

    /// When each certificate file last changed (and its size), to notice a renewal.
    func certificateFilesStamp() -> [String] {
        [
            self.tlsOptions.cert ?? "certs/server.pem", self.tlsOptions.key ?? "certs/server.key",
            self.clients.clientCA, self.clients.clientCRL, self.operations.config,
        ]
        .compactMap {
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
}

/// The configuration the server runs with, as reloads change it.
final class RunningCommand: Sendable {
    let value: Mutex<ServerCommand>

    init(_ command: ServerCommand) {
        self.value = Mutex(command)
    }
}
