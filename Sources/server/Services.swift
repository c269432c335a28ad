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
        case .text:
            QueuedLogHandler.writer.flush()  // the log lines queued before this one come first
            Standard.error("server: \(text)")
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
