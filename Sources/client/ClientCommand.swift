import ArgumentParser
import LengthEcho
import LengthEchoCore
import LengthEchoTLS
import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

@main
struct ClientCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "client",
        abstract: "The length-echo client: sends each message and prints the server's reply.",
        discussion: """
            `client test_string` prints `11 : test_string`, as the original C client does. Several messages \
            get one reply per line, in order; `-` reads messages from standard input, one per line.
            """,
        version: LengthEchoRelease.version
    )

    @Argument(help: "Messages to send; `-` reads them from standard input, one per line.")
    var messages: [String]

    @Option(name: .long, help: "The server's host name or IPv4/IPv6 address.")
    var host = "127.0.0.1"

    @Option(name: .long, help: "The server's port.")
    var port = 4000

    @Option(name: .long, help: "What ends each message and reply: nul (the original protocol) or line.")
    var framing: Framing = .nul

    @Option(name: .customLong("connect-timeout"), help: "Seconds to wait for the connection.")
    var connectTimeout: Double = 5

    @Option(name: .customLong("reply-timeout"), help: "Seconds to wait for each reply.")
    var replyTimeout: Double = 30

    @Flag(name: .long, help: "Speak TLS. The server's certificate chain and name are always verified.")
    var tls = false

    @Option(name: .long, help: "With --tls: the CA certificates to trust, PEM. (default: the system's trust store)")
    var ca: String?

    @Option(name: .long, help: "With --tls: a client certificate chain for mutual TLS, PEM.")
    var cert: String?

    @Option(name: .long, help: "With --tls: the client certificate's private key, PEM.")
    var key: String?

    @Option(name: .customLong("server-name"), help: "With --tls: the name to send (SNI) and verify, instead of --host.")
    var serverName: String?

    @Option(name: .customLong("tls-min"), help: "With --tls: the oldest TLS version to offer, 1.2 or 1.3.")
    var tlsMin: TLSVersion = .tls12

    @Option(name: .customLong("tls-max"), help: "With --tls: the newest TLS version to offer, 1.2 or 1.3.")
    var tlsMax: TLSVersion = .tls13

    @Flag(name: .long, help: "With --tls: do not verify the server's certificate or name. Unsafe; for debugging only.")
    var insecure = false

    @Option(
        name: .customLong("pin-spki-sha256"),
        help: """
            With --tls: also require the server's public key to be one of these (SHA-256 of its DER \
            SubjectPublicKeyInfo, hex; repeat for several), on top of the usual verification.
            """
    )
    var pinSPKI: [String] = []

    @Option(
        name: .customLong("tls-keylog"),
        help:
            "With --tls: append the TLS secrets to FILE (NSS key log, mode 0600) so Wireshark can decrypt. Debugging only."
    )
    var tlsKeylog: String?

    @Flag(name: .shortAndLong, help: "With --tls: print the TLS version, cipher and server certificate on stderr.")
    var verbose = false

    func validate() throws {
        if !self.tls,
            self.ca != nil || self.cert != nil || self.key != nil || self.serverName != nil || self.insecure
                || self.tlsKeylog != nil || !self.pinSPKI.isEmpty
        {
            throw ValidationError(
                "--ca, --cert, --key, --server-name, --insecure, --pin-spki-sha256 and --tls-keylog need --tls")
        }
        for pin in self.pinSPKI where IdentityPolicy.digest(hex: pin) == nil {
            throw ValidationError("--pin-spki-sha256 \(pin): expected 64 hex digits (colons allowed)")
        }
        guard !self.messages.isEmpty else { throw ValidationError("give at least one message, or - to read stdin") }
        guard (1...65535).contains(self.port) else { throw ValidationError("--port must be 1...65535") }
        guard self.connectTimeout > 0, self.replyTimeout > 0 else { throw ValidationError("timeouts must be positive") }
    }

    func run() async throws {
        var configuration = ClientConfiguration(host: self.host, port: self.port)
        configuration.framing = self.framing
        configuration.connectTimeout = .fromSeconds(self.connectTimeout)
        configuration.replyTimeout = .fromSeconds(self.replyTimeout)
        if self.tls {
            if self.insecure {
                Self.printError(
                    "client: warning: --insecure: the server's certificate is NOT verified; anyone on the path can read and change this traffic"
                )
            }
            do {
                if let path = self.tlsKeylog {
                    if let note = try TLSKeyLog.open(path) { Self.printError("client: warning: \(note)") }
                    Self.printError(
                        "client: warning: --tls-keylog: the session keys go to \(path); anyone who reads it can decrypt this traffic"
                    )
                }
                configuration.tls = try TLSContext.client(
                    trustRoots: self.ca.map(TrustRoots.file) ?? .system,
                    certificateChain: self.cert,
                    privateKey: self.key,
                    minimumVersion: self.tlsMin,
                    maximumVersion: self.tlsMax,
                    verify: !self.insecure,
                    keyLog: self.tlsKeylog != nil,
                    pinnedPublicKeys: self.pinSPKI.compactMap(IdentityPolicy.digest(hex:))
                )
            } catch {
                Self.printError("client: \(error)\(self.advice(for: error).map { "; \($0)" } ?? "")")
                throw ExitCode.failure
            }
            configuration.serverName = self.serverName
        }
        let client = LengthEchoClient(configuration: configuration)
        defer { Task { await client.close() } }
        do {
            for argument in self.messages {
                if argument == "-" {
                    while let line = readLine(strippingNewline: true) {
                        try await self.exchange(Array(line.utf8), client: client)
                    }
                } else {
                    try await self.exchange(Array(argument.utf8), client: client)
                }
            }
        } catch {
            Self.printError("client: \(error)\(self.advice(for: error).map { "; \($0)" } ?? "")")
            throw ExitCode.failure
        }
        await client.close()
    }

    /// What this program's user can do about a library error, in terms of its own flags.
    func advice(for error: any Error) -> String? {
        switch error {
        case LengthEchoError.replyTimeout:
            return "see --reply-timeout"
        case LengthEchoError.connectTimeout:
            return "see --connect-timeout"
        case LengthEchoError.connectionRefused(_, let port):
            return "start one with `server --port \(port)`, or pass the right --host/--port"
        case LengthEchoError.invalidReply where self.framing == .nul:
            return "if the server speaks line framing, pass --framing line"
        case let error as TLSError:
            switch error.cause {
            case .untrustedPeerCertificate: return "pass --ca with the CA that signed it (e.g. certs/ca.pem)"
            case .wrongHost: return "connect by one of those names, or pass --server-name"
            case .clientCertificateRequired, .clientCertificateMaybeRequired: return "pass --cert and --key"
            case .noSharedVersion:
                return
                    "this client offers TLS \(self.tlsMin.rawValue) to \(self.tlsMax.rawValue) (see --tls-min, --tls-max)"
            case .peerNotTLS: return "try without --tls"
            case .identityRefused: return "check --pin-spki-sha256 against the server's new key"
            case .ourCertificateRefused, .noSharedCipher, nil: return nil
            }
        default:
            return nil
        }
    }

    static func printError(_ text: String) {
        let line = text + "\n"
        _ = line.utf8CString.withUnsafeBufferPointer { write(2, $0.baseAddress, $0.count - 1) }
    }

    private func exchange(_ message: [UInt8], client: LengthEchoClient) async throws {
        let reply = try await client.send(message)
        if self.verbose, let info = await client.tlsInfo, await client.takeNewConnectionFlag() {
            Self.printError(
                "client: \(info.version), \(info.cipher)\(info.resumed ? ", resumed" : ""); server certificate: "
                    + "\(info.peerSubject.map { Escaping.printable(Array($0.utf8)) } ?? "none"), "
                    + "expires \(info.peerNotAfter ?? "?")"
            )
        }
        var line = reply.bytes
        line.append(UInt8(ascii: "\n"))
        line.withUnsafeBytes { raw in
            guard let base = raw.baseAddress else { return }
            var offset = 0
            while offset < raw.count {
                let n = write(1, base + offset, raw.count - offset)
                if n <= 0 { return }
                offset += n
            }
        }
    }
}

extension TLSVersion: ExpressibleByArgument {}
extension Framing: ExpressibleByArgument {}
