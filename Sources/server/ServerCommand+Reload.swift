import ArgumentParser
import CoreMetrics
import LengthEcho
import Synchronization

/// Reloading: SIGHUP and `--reload-interval` build the whole configuration again and apply what a running
/// server can take.
extension ServerCommand {
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
}

/// The configuration the server runs with, as reloads change it.
final class RunningCommand: Sendable {
    let value: Mutex<ServerCommand>

    init(_ command: ServerCommand) {
        self.value = Mutex(command)
    }
}
