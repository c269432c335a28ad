import Foundation
import Synchronization

/// A built executable of this package (`server`, `client`), run as a user would run it.
final class Executable: Sendable {
    let process: Process
    private let output = Captured()
    /// Resumed whenever either stream gets bytes or the process ends.
    private let changes: AsyncStream<Void>
    private let notify: AsyncStream<Void>.Continuation

    /// The folder the test bundle was built into, which also holds the package's executables.
    static let productsDirectory: URL = {
        var url = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        while !FileManager.default.fileExists(atPath: url.appendingPathComponent("server").path), url.path != "/" {
            url.deleteLastPathComponent()
        }
        return url
    }()

    init(_ name: String, _ arguments: [String], stdin: Data? = nil) throws {
        let (changes, notify) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
        self.changes = changes
        self.notify = notify
        let process = Process()
        process.executableURL = Self.productsDirectory.appendingPathComponent(name)
        process.arguments = arguments
        let out = Pipe()
        let err = Pipe()
        process.standardOutput = out
        process.standardError = err
        let input = Pipe()
        process.standardInput = input
        out.fileHandleForReading.readabilityHandler = { [output, notify] handle in
            let data = handle.availableData
            output.state.withLock {
                $0.stdout += data
                if data.isEmpty { $0.ended += 1 }
            }
            if data.isEmpty { handle.readabilityHandler = nil }
            notify.yield()
        }
        err.fileHandleForReading.readabilityHandler = { [output, notify] handle in
            let data = handle.availableData
            output.state.withLock {
                $0.stderr += data
                if data.isEmpty { $0.ended += 1 }
            }
            if data.isEmpty { handle.readabilityHandler = nil }
            notify.yield()
        }
        process.terminationHandler = { _ in notify.yield() }
        self.process = process
        try process.run()
        if let stdin { input.fileHandleForWriting.write(stdin) }
        try input.fileHandleForWriting.close()
    }

    var stdout: String { String(decoding: self.output.state.withLock { $0.stdout }, as: UTF8.self) }
    var stderr: String { String(decoding: self.output.state.withLock { $0.stderr }, as: UTF8.self) }

    /// Waits until `condition` holds, woken by output or exit, never by polling on a timer.
    func wait(until condition: @Sendable (Executable) -> Bool) async {
        if condition(self) { return }
        for await _ in self.changes {
            if condition(self) { return }
        }
    }

    /// Waits for the process to exit and for all its output to be read; returns its status.
    func exitStatus() async -> Int32 {
        await self.wait { !$0.process.isRunning && $0.output.state.withLock { $0.ended == 2 } }
        self.process.waitUntilExit()
        return self.process.terminationStatus
    }

    func terminate(signal: Int32 = SIGTERM) {
        if self.process.isRunning { kill(self.process.processIdentifier, signal) }
    }

    deinit {
        if self.process.isRunning { kill(self.process.processIdentifier, SIGKILL) }
    }
}

final class Captured: Sendable {
    let state = Mutex<(stdout: [UInt8], stderr: [UInt8], ended: Int)>(([], [], 0))
}
