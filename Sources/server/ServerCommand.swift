import ArgumentParser
import Foundation
import LengthEcho
import LengthEchoCore
import LengthEchoTLS
import Logging
import NIOCore

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

    @Option(name: .customLong("handshake-timeout"), help: "With --tls: seconds a client has to finish its handshake.")
    var handshakeTimeout: Double = 10

    @Flag(name: .shortAndLong, help: "Do not print `receive:` lines.")
    var quiet = false

    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel: Logger.Level = .info

    func validate() throws {
        guard (0...65535).contains(self.port) else { throw ValidationError("--port must be 0...65535") }
        guard self.maxMessage >= 0 else { throw ValidationError("--max-message must not be negative") }
        guard self.idleTimeout > 0 else { throw ValidationError("--idle-timeout must be positive") }
        guard self.messageTimeout > 0 else { throw ValidationError("--message-timeout must be positive") }
        guard self.drainTimeout >= 0 else { throw ValidationError("--drain-timeout must not be negative") }
        guard self.maxConnections > 0 else { throw ValidationError("--max-connections must be positive") }
        guard self.threads > 0 else { throw ValidationError("--threads must be positive") }
        guard self.handshakeTimeout > 0 else { throw ValidationError("--handshake-timeout must be positive") }
        if !self.tls, self.cert != nil || self.key != nil || self.clientCA != nil || self.clientAuth != .none {
            throw ValidationError("--cert, --key, --client-ca and --client-auth need --tls")
        }
        if self.clientCA != nil && self.clientAuth == .none {
            throw ValidationError("--client-ca needs --client-auth optional or required")
        }
        if self.clientCA == nil && self.clientAuth != .none {
            throw ValidationError(
                "--client-auth \(self.clientAuth.rawValue) needs --client-ca: the CA that signs client certificates")
        }
    }

    private func makeTLSContext() throws -> TLSContext {
        try TLSContext.server(
            certificateChain: self.cert ?? "certs/server.pem",
            privateKey: self.key ?? "certs/server.key",
            clientCA: self.clientCA,
            clientAuthentication: self.clientAuth,
            minimumVersion: self.tlsMin
        )
    }

    /// SIGHUP: read the certificate, key and client CA again (a renewal), for new connections. If they are
    /// not usable, say why and keep serving with the ones already loaded.
    private func reload(_ server: LengthEchoServer) {
        guard self.tls else {
            Standard.error("server: SIGHUP: nothing to reload without --tls")
            return
        }
        do {
            server.replaceTLSContext(try self.makeTLSContext())
            Standard.error("server: SIGHUP: reloaded the certificate and key for new connections")
        } catch {
            Standard.error("server: SIGHUP: kept the certificate already loaded: \(error)")
        }
    }

    func run() async throws {
        let level = self.logLevel
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        var configuration = ServerConfiguration()
        if !self.host.isEmpty { configuration.hosts = self.host }
        configuration.port = self.port
        configuration.framing = self.framing
        configuration.maximumMessageLength = self.maxMessage
        configuration.idleTimeout = .fromSeconds(self.idleTimeout)
        configuration.messageTimeout = .fromSeconds(self.messageTimeout)
        configuration.maximumConnections = self.maxConnections
        configuration.drainTimeout = .fromSeconds(self.drainTimeout)
        configuration.threads = self.threads
        configuration.handshakeTimeout = .fromSeconds(self.handshakeTimeout)
        if self.tls {
            do {
                configuration.tls = try self.makeTLSContext()
            } catch {
                Standard.error("server: \(error)")
                if self.cert == nil { Standard.error("server: (make test certificates with scripts/gen-certs.sh)") }
                throw ExitCode.failure
            }
        }
        var receiveLog: ReceiveLog?
        if !self.quiet {
            let log = ReceiveLog()
            receiveLog = log
            configuration.onMessage = { message in log.print(message) }
        }

        let signals = SignalWaiter(SIGINT, SIGTERM, SIGHUP)
        let server: LengthEchoServer
        do {
            server = try await LengthEchoServer.start(configuration: configuration)
        } catch {
            Standard.error("server: \(error)\(Self.advice(for: error).map { "; \($0)" } ?? "")")
            throw ExitCode.failure
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
        Standard.error("server: listening on \(addresses.joined(separator: " and ")) (\(security)\(framing))")

        var signal = await signals.next()
        while signal == SIGHUP {
            self.reload(server)
            signal = await signals.next()
        }
        Standard.error(
            "server: \(signal == SIGINT ? "SIGINT" : "SIGTERM"), draining \(server.connectionCount) connections")
        Task {
            while await signals.next() == SIGHUP {}
            Standard.error("server: second signal, exiting now")
            Glibc.exit(130)
        }
        await server.shutdown()
        receiveLog?.flush()
        Standard.error("server: stopped")
    }
}

extension ServerCommand {
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

/// The original's `receive: <message>` lines, written by a thread of their own.
///
/// Event loops only escape the message into a shared buffer (no allocation per message once it has grown);
/// a printer thread writes it out. A slow or paused stdout (`server | less`) therefore never stalls the
/// event loops: past 4 MiB of unwritten lines new ones are dropped, and the count of dropped lines is printed.
final class ReceiveLog: @unchecked Sendable {
    private let condition = NSCondition()
    private var pending: [UInt8] = []
    private var dropped = 0
    private var writing = false
    private static let limit = 4 << 20
    private static let prefix = Array("receive: ".utf8)

    init() {
        self.pending.reserveCapacity(64 * 1024)
        Thread { [self] in self.run() }.start()
    }

    func print(_ message: ByteBuffer) {
        self.condition.lock()
        defer { self.condition.unlock() }
        guard self.pending.count < Self.limit else {
            self.dropped += 1
            return
        }
        self.pending.append(contentsOf: Self.prefix)
        message.withUnsafeReadableBytes { bytes in
            Escaping.appendPrintable(bytes.bindMemory(to: UInt8.self), to: &self.pending)
        }
        self.pending.append(UInt8(ascii: "\n"))
        self.condition.broadcast()  // the printer, or a flush waiting for it
    }

    /// Waits until every line printed so far is written (before the process exits).
    func flush() {
        self.condition.lock()
        while !self.pending.isEmpty || self.writing {
            self.condition.wait()
        }
        self.condition.unlock()
    }

    private func run() {
        var out: [UInt8] = []
        out.reserveCapacity(64 * 1024)
        while true {
            self.condition.lock()
            while self.pending.isEmpty && self.dropped == 0 {
                self.condition.wait()
            }
            swap(&out, &self.pending)
            let dropped = self.dropped
            self.dropped = 0
            self.writing = true
            self.condition.unlock()

            Standard.write(out, to: 1)
            if dropped > 0 {
                Standard.write(Array("receive: (\(dropped) lines not shown: stdout is not keeping up)\n".utf8), to: 1)
            }
            out.removeAll(keepingCapacity: true)

            self.condition.lock()
            self.writing = false
            self.condition.broadcast()
            self.condition.unlock()
        }
    }
}

enum Standard {
    static func error(_ text: String) {
        Self.write(Array((text + "\n").utf8), to: 2)
    }

    static func write(_ bytes: [UInt8], to fd: Int32) {
        bytes.withUnsafeBytes { raw in
            guard let base = raw.baseAddress else { return }
            var offset = 0
            while offset < raw.count {
                let n = Glibc.write(fd, base + offset, raw.count - offset)
                if n <= 0 {
                    if n < 0 && errno == EINTR { continue }
                    return
                }
                offset += n
            }
        }
    }
}

/// The write end of the self-pipe the signal handler writes to. Set once, before any handler is installed.
nonisolated(unsafe) private var signalPipeWriteEnd: Int32 = -1

/// Turns SIGINT and SIGTERM into something to await.
///
/// The handler is installed synchronously with `sigaction` and only writes the signal's number to a pipe
/// (async-signal-safe), so a signal that arrives right after start-up is never lost nor fatal; a thread
/// reads the pipe and hands each signal to whoever awaits `next()`.
final class SignalWaiter: Sendable {
    private let stream: AsyncStream<Int32>

    init(_ signals: Int32...) {
        let (stream, continuation) = AsyncStream<Int32>.makeStream()
        self.stream = stream
        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else { fatalError("cannot create the signal pipe: \(errno)") }
        signalPipeWriteEnd = fds[1]
        let readEnd = fds[0]
        for number in signals {
            var action = sigaction()
            action.__sigaction_handler.sa_handler = { number in
                var byte = UInt8(truncatingIfNeeded: number)
                _ = Glibc.write(signalPipeWriteEnd, &byte, 1)
            }
            sigemptyset(&action.sa_mask)
            action.sa_flags = SA_RESTART
            sigaction(number, &action, nil)
        }
        let thread = Thread {
            var byte: UInt8 = 0
            while true {
                let n = Glibc.read(readEnd, &byte, 1)
                if n == 1 {
                    continuation.yield(Int32(byte))
                } else if n < 0 && errno == EINTR {
                    continue
                } else {
                    return
                }
            }
        }
        thread.start()
    }

    func next() async -> Int32 {
        var iterator = self.stream.makeAsyncIterator()
        return await iterator.next() ?? SIGTERM
    }
}
