import ArgumentParser
import Configuration
import Foundation
import LengthEcho
import SystemPackage
import Yams

/// Where each of the server's settings comes from: a flag, the environment (`LENGTH_ECHO_<KEY>`), the file
/// (`--config`, YAML whose keys are the long flag names), or the default; in that order of precedence.
///
/// The values come through swift-configuration (its YAML file provider and its environment provider); which keys
/// a file holds is read with Yams, so that a key the server does not know is an error that names it.
struct ConfigurationSources {
    enum Source: String {
        case flag, environment, file, `default`
    }

    /// What the command line gave, by long name (`--port 5`, `--port=5`, and `-q` for `quiet`).
    let givenFlags: Set<String>
    private let environment: ConfigReader
    private let environmentKeys: Set<String>
    private let file: ConfigReader?
    private let fileKeys: Set<String>
    let filePath: String?
    /// Environment variables with the prefix that name no setting (warned about, not refused: other tools
    /// share the prefix).
    let unknownEnvironment: [String]

    static let environmentPrefix = "LENGTH_ECHO_"

    /// The environment variable of `key`: `max-connections` is `LENGTH_ECHO_MAX_CONNECTIONS`.
    static func environmentName(_ key: String) -> String {
        Self.environmentPrefix + key.uppercased().replacingOccurrences(of: "-", with: "_")
    }

    init(
        arguments: [String], environment: [String: String], filePath: String?, keys: [String]
    ) async throws {
        var given = Set<String>()
        for argument in arguments.dropFirst() {
            if argument == "--" { break }
            if argument == "-q" { given.insert("quiet") }
            guard argument.hasPrefix("--") else { continue }
            given.insert(String(argument.dropFirst(2).prefix { $0 != "=" }))
        }
        self.givenFlags = given
        let known = Set(keys)
        var stripped: [String: String] = [:]
        var environmentKeys = Set<String>()
        var unknown: [String] = []
        let byEnvironmentName = Dictionary(uniqueKeysWithValues: keys.map { (Self.environmentName($0), $0) })
        for (name, value) in environment where name.hasPrefix(Self.environmentPrefix) {
            if let key = byEnvironmentName[name] {
                // The provider reads key `max-connections` as `MAX_CONNECTIONS`: the name without the prefix.
                stripped[String(name.dropFirst(Self.environmentPrefix.count))] = value
                environmentKeys.insert(key)
            } else {
                unknown.append(name)
            }
        }
        self.unknownEnvironment = unknown.sorted()
        self.environmentKeys = environmentKeys
        self.environment = ConfigReader(provider: EnvironmentVariablesProvider(environmentVariables: stripped))
        self.filePath = filePath
        guard let filePath else {
            self.file = nil
            self.fileKeys = []
            return
        }
        let text: String
        do {
            text = try String(contentsOfFile: filePath, encoding: .utf8)
        } catch {
            throw ValidationError("--config \(filePath): cannot read it (\(error.localizedDescription))")
        }
        let node: Any?
        do {
            node = try Yams.load(yaml: text)
        } catch {
            // One line: Yams's message spans several, with the line it quotes.
            let said = "\(error)".split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }
            throw ValidationError(
                "--config \(filePath): not YAML: \(said.filter { !$0.isEmpty }.joined(separator: " "))")
        }
        guard let mapping = (node ?? [String: Any]()) as? [String: Any] else {
            throw ValidationError("--config \(filePath): expected a mapping of keys (the long flag names) to values")
        }
        for key in mapping.keys.sorted() where !known.contains(key) {
            throw ValidationError("--config \(filePath): unknown key \"\(key)\" (the keys are the long flag names)")
        }
        self.fileKeys = Set(mapping.keys)
        do {
            self.file = ConfigReader(provider: try await FileProvider<YAMLSnapshot>(filePath: FilePath(filePath)))
        } catch {
            throw ValidationError("--config \(filePath): \(error)")
        }
    }

    /// The source of `key`, and the reader holding it (nil for a flag or the default).
    func source(of key: String) -> (Source, ConfigReader?) {
        if self.givenFlags.contains(key) { return (.flag, nil) }
        if self.environmentKeys.contains(key) { return (.environment, self.environment) }
        if self.fileKeys.contains(key), let file = self.file { return (.file, file) }
        return (.default, nil)
    }

    /// How a user wrote `key`, for a message: `--port`, `LENGTH_ECHO_PORT`, or `port (in FILE)`.
    func name(of key: String) -> String {
        switch self.source(of: key).0 {
        case .flag, .default: "--\(key)"
        case .environment: Self.environmentName(key)
        case .file: "\(key) (in \(self.filePath ?? "the file"))"
        }
    }
}

extension ConfigurationSources {
    /// How a user wrote the keys of one of the library's settings: `--client-ca`, or `--allow-cn, --allow-dns,
    /// --allow-uri and --allow-spki-sha256`.
    func name(of setting: ServerConfiguration.Setting) -> String {
        let names = ServerCommand.keys(for: setting).map { self.name(of: $0) }
        guard names.count > 1, let last = names.last else { return names.first ?? setting.rawValue }
        return names.dropLast().joined(separator: ", ") + " and " + last
    }
}
