import ArgumentParser
import Configuration
import Foundation
import LengthEcho

/// The server's settings as keys: each long flag is a key of the configuration file and an environment variable
/// too. One table, so the flags, the file, the environment and `--check-config` cannot disagree.
extension ServerCommand {
    /// One key: how a value from the environment or the file is set on the command, and how it is shown.
    struct Key {
        let name: String
        let read: (inout ServerCommand, ConfigReader) throws -> Void
        let show: (ServerCommand) -> String
        /// Sets this key's value in the first command to the second's.
        let copy: (inout ServerCommand, ServerCommand) -> Void

        /// A key whose value lives at `path`: copying it is the same for every kind.
        private static func at<V>(
            _ name: String, _ path: WritableKeyPath<ServerCommand, V>,
            read: @escaping (inout ServerCommand, ConfigReader) throws -> Void,
            show: @escaping (ServerCommand) -> String
        ) -> Key {
            Key(name: name, read: read, show: show, copy: { $0[keyPath: path] = $1[keyPath: path] })
        }

        /// A single value (`port: 5`).
        static func value<T: ExpressibleByArgument>(_ name: String, _ path: WritableKeyPath<ServerCommand, T>) -> Key {
            Self.at(
                name, path,
                read: { command, reader in
                    command[keyPath: path] = try Self.parse(name, try reader.requiredString(forKey: .init(name)))
                },
                show: { $0[keyPath: path].defaultValueDescription })
        }

        /// A value that may be absent (`cert: server.pem`).
        static func optional<T: ExpressibleByArgument>(
            _ name: String, _ path: WritableKeyPath<ServerCommand, T?>, absent: String = "(none)"
        ) -> Key {
            Self.at(
                name, path,
                read: { command, reader in
                    command[keyPath: path] = try Self.parse(name, try reader.requiredString(forKey: .init(name)))
                },
                show: { $0[keyPath: path].map(\.defaultValueDescription) ?? absent })
        }

        /// A repeatable flag: a list, or one value as a list of one; comma-separated in the environment.
        static func list(
            _ name: String, _ path: WritableKeyPath<ServerCommand, [String]>, absent: String = "(none)"
        ) -> Key {
            Self.at(
                name, path,
                read: { command, reader in
                    let key = ConfigKey(name)
                    if let values = reader.stringArray(forKey: key) {
                        command[keyPath: path] = values
                    } else {
                        command[keyPath: path] = [try reader.requiredString(forKey: key)]
                    }
                },
                show: { $0[keyPath: path].isEmpty ? absent : $0[keyPath: path].joined(separator: ", ") })
        }

        /// A switch: `true` or `false`.
        static func flag(_ name: String, _ path: WritableKeyPath<ServerCommand, Bool>) -> Key {
            Self.at(
                name, path,
                read: { command, reader in command[keyPath: path] = try reader.requiredBool(forKey: .init(name)) },
                show: { $0[keyPath: path] ? "true" : "false" })
        }

        private static func parse<T: ExpressibleByArgument>(_ name: String, _ text: String) throws -> T {
            guard let value = T(argument: text) else {
                throw ValidationError("\(name): \"\(text)\" is not a valid value")
            }
            return value
        }
    }

    /// Every key, in the order `--help` lists the flags. (Computed: a table of closures is no shared state.)
    static var keys: [Key] {
        [
            .list("host", \.listening.host, absent: "0.0.0.0, ::"),
            .value("port", \.listening.port),
            .value("framing", \.listening.framing),
            .value("threads", \.listening.threads),
            .flag("cpu-affinity", \.listening.cpuAffinity),
            .value("max-message", \.limits.maxMessage),
            .value("idle-timeout", \.limits.idleTimeout),
            .value("message-timeout", \.limits.messageTimeout),
            .value("max-connections", \.limits.maxConnections),
            .value("drain-timeout", \.limits.drainTimeout),
            .list("allow-from", \.admission.allowFrom),
            .list("deny-from", \.admission.denyFrom),
            .optional("max-connections-per-ip", \.admission.maxConnectionsPerIP),
            .optional("handshake-rate", \.admission.handshakeRate),
            .flag("tls", \.tlsOptions.tls),
            .optional("cert", \.tlsOptions.cert, absent: "certs/server.pem"),
            .optional("key", \.tlsOptions.key, absent: "certs/server.key"),
            .value("tls-min", \.tlsOptions.tlsMin),
            .value("handshake-timeout", \.tlsOptions.handshakeTimeout),
            .flag("alpn-required", \.tlsOptions.alpnRequired),
            .optional("tls-keylog", \.tlsOptions.tlsKeylog),
            .optional("reload-interval", \.tlsOptions.reloadInterval),
            .optional("client-ca", \.clients.clientCA),
            .value("client-auth", \.clients.clientAuth),
            .list("allow-cn", \.clients.allowCN),
            .list("allow-dns", \.clients.allowDNS),
            .list("allow-uri", \.clients.allowURI),
            .list("allow-spki-sha256", \.clients.allowSPKI),
            .optional("client-crl", \.clients.clientCRL),
            .flag("crl-check-all", \.clients.crlCheckAll),
            .flag("crl-allow-stale", \.clients.crlAllowStale),
            .flag("proxy-protocol", \.proxy.proxyProtocol),
            .list("proxy-from", \.proxy.proxyFrom),
            .value("proxy-timeout", \.proxy.proxyTimeout),
            .optional("status", \.operations.status),
            .flag("quiet", \.operations.quiet),
            .value("log-level", \.operations.logLevel),
            .value("log-format", \.operations.logFormat),
        ]
    }

    /// This command with the environment and the file (`--config`) applied beneath its flags, and where each
    /// key came from.
    func merged(
        arguments: [String] = CommandLine.arguments, environment: [String: String] = ProcessInfo.processInfo.environment
    ) async throws -> (ServerCommand, ConfigurationSources) {
        let sources = try await ConfigurationSources(
            arguments: arguments, environment: environment, filePath: self.operations.config,
            keys: Self.keys.map(\.name))
        var command = self
        for key in Self.keys {
            let (source, reader) = sources.source(of: key.name)
            guard let reader else { continue }
            do {
                try key.read(&command, reader)
            } catch let error as ValidationError {
                throw ValidationError(
                    "\(sources.name(of: key.name)): \(error.message.split(separator: ":", maxSplits: 1).last.map { $0.trimmingCharacters(in: .whitespaces) } ?? "")"
                )
            } catch {
                throw ValidationError("\(sources.name(of: key.name)): not a valid value (\(source.rawValue))")
            }
        }
        return (command, sources)
    }

    /// The effective configuration, a key a line: its value and where it came from. No key material: the
    /// keys name files.
    static func describe(_ command: ServerCommand, _ sources: ConfigurationSources) -> String {
        let width = Self.keys.map(\.name.count).max() ?? 0
        return Self.keys.map { key in
            let padded = key.name.padding(toLength: width, withPad: " ", startingAt: 0)
            return "\(padded)  \(key.show(command))  (\(sources.source(of: key.name).0.rawValue))"
        }.joined(separator: "\n")
    }
}

extension ServerCommand {
    /// `--check-config`: everything a start checks, without binding or serving: the keys, the library's rules, the
    /// TLS files (readable, the key matches the certificate, the CA and CRL parse). Prints the effective
    /// configuration and exits 0, or each problem on a line of its own and exits 1.
    func checkConfiguration(_ sources: ConfigurationSources) async throws {
        var problems: [String] = []
        for name in sources.unknownEnvironment {
            FileHandle.standardError.write(Data("server: warning: \(name) names no setting; ignored\n".utf8))
        }
        let configuration = self.libraryConfiguration()
        problems += configuration.problems().map { problem in problem.description { sources.name(of: $0) } }
        if problems.isEmpty, let tls = configuration.tls {
            do {
                _ = try TLSContext.server(tls)
            } catch {
                problems.append("\(error)")
            }
        }
        guard problems.isEmpty else {
            for problem in problems { FileHandle.standardError.write(Data("server: \(problem)\n".utf8)) }
            throw ExitCode.failure
        }
        print("configuration valid\(sources.filePath.map { " (--config \($0))" } ?? ""):")
        print(Self.describe(self, sources))
    }
}
