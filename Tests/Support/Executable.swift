import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A child process run as a user would run it: a built executable of this package (`server`, `client`)
/// or a system tool by absolute path.
///
/// It is spawned with `posix_spawn` and pipes made close-on-exec, so no other child inherits them and their
/// end-of-file is reliable; plain threads read the pipes and reap the child. (Foundation's `Process` and
/// `FileHandle` were flaky here under parallel tests: inherited pipes, EINTR traps, dispatch crashes.)
package final class Executable: Sendable {
    private struct State {
        var stdout: [UInt8] = []
        var stderr: [UInt8] = []
        var streamsEnded = 0
        var exitStatus: Int32?
    }

    package let pid: pid_t
    private let state = Mutex(State())
    private let condition = NSCondition()
    private let stdinFD: Mutex<Int32>
    /// Resumed whenever output arrives or the process ends.
    private let changes: AsyncStream<Void>
    private let notify: AsyncStream<Void>.Continuation

    /// The folder the test bundle was built into, which also holds the package's executables.
    package static let productsDirectory: String = {
        var url = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        while !FileManager.default.fileExists(atPath: url.appendingPathComponent("server").path), url.path != "/" {
            url.deleteLastPathComponent()
        }
        return url.path
    }()

    package struct SpawnFailed: Error, CustomStringConvertible {
        package let description: String
    }

    /// - Parameters:
    ///   - environment: variables added to (or replacing) this process's environment for the child.
    ///   - passing: descriptors the child gets as 3, 4, ... (as systemd passes listening sockets).
    package init(
        _ name: String, _ arguments: [String], stdin: Data? = nil, keepStdinOpen: Bool = false,
        environment: [String: String] = [:], passing: [Int32] = []
    ) throws {
        let path = name.hasPrefix("/") ? name : Self.productsDirectory + "/" + name
        let (changes, notify) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
        self.changes = changes
        self.notify = notify

        var output: [Int32] = [-1, -1]
        var errors: [Int32] = [-1, -1]
        var input: [Int32] = [-1, -1]
        // Pipes are made and marked close-on-exec under one lock that every spawn here takes, so no child
        // started by a concurrent test can inherit them.
        spawnLock.lock()
        defer { spawnLock.unlock() }
        guard pipe(&output) == 0, pipe(&errors) == 0, pipe(&input) == 0 else {
            throw SpawnFailed(description: "pipe: \(errno)")
        }
        for fd in output + errors + input { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, input[0], 0)
        posix_spawn_file_actions_adddup2(&actions, output[1], 1)
        posix_spawn_file_actions_adddup2(&actions, errors[1], 2)
        // Nothing else of this process reaches the child: a socket a test's in-process server holds (NIO does
        // not make every one close-on-exec) would otherwise stay open in the child after the server closes
        // it, so its peer would never see the close.
        // Passed descriptors are moved above the ones they will become first, so no dup2 overwrites another.
        for (index, fd) in passing.enumerated() {
            posix_spawn_file_actions_adddup2(&actions, fd, Int32(100 + index))
        }
        for index in passing.indices {
            posix_spawn_file_actions_adddup2(&actions, Int32(100 + index), Int32(3 + index))
        }
        _ = addCloseFrom?(&actions, Int32(3 + passing.count))
        let argv: [UnsafeMutablePointer<CChar>?] = ([path] + arguments).map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var pid: pid_t = 0
        var variables: [String] = []
        var index = 0
        while let entry = environ[index] {
            let text = String(cString: entry)
            if !environment.keys.contains(String(text.prefix { $0 != "=" })) { variables.append(text) }
            index += 1
        }
        variables += environment.map { "\($0.key)=\($0.value)" }
        let envp: [UnsafeMutablePointer<CChar>?] = variables.map { strdup($0) } + [nil]
        defer { for pointer in envp { free(pointer) } }
        // The child starts with no signal blocked and the default action for each: the thread spawning it may be
        // one of the runtime's, which block signals, and a child would inherit that (SIGTERM would not stop it).
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var none = sigset_t()
        sigemptyset(&none)
        posix_spawnattr_setsigmask(&attributes, &none)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for signal in [SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE, SIGUSR1, SIGUSR2] { sigaddset(&defaults, signal) }
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        let result = posix_spawn(&pid, path, &actions, &attributes, argv, envp)
        close(input[0])
        close(output[1])
        close(errors[1])
        guard result == 0 else {
            close(input[1])
            close(output[0])
            close(errors[0])
            throw SpawnFailed(description: "cannot start \(path): \(String(cString: strerror(result)))")
        }
        self.pid = pid
        if let stdin {
            stdin.withUnsafeBytes { bytes in
                var offset = 0
                while offset < bytes.count {
                    let n = write(input[1], bytes.baseAddress! + offset, bytes.count - offset)
                    if n <= 0 { if errno == EINTR { continue } else { break } }
                    offset += n
                }
            }
        }
        if !keepStdinOpen {
            close(input[1])
            self.stdinFD = Mutex(-1)
        } else {
            self.stdinFD = Mutex(input[1])
        }

        for (fd, isStdout) in [(output[0], true), (errors[0], false)] {
            Thread { [self] in
                var chunk = [UInt8](repeating: 0, count: 65536)
                while true {
                    let n = read(fd, &chunk, chunk.count)
                    if n < 0 && errno == EINTR { continue }
                    if n <= 0 { break }
                    self.update { if isStdout { $0.stdout += chunk[0..<n] } else { $0.stderr += chunk[0..<n] } }
                }
                close(fd)
                self.update { $0.streamsEnded += 1 }
            }.start()
        }
        let child = pid
        Thread { [self] in
            var status: Int32 = 0
            while waitpid(child, &status, 0) < 0 && errno == EINTR {}
            let code = (status & 0x7F) == 0 ? (status >> 8) & 0xFF : 128 + (status & 0x7F)
            self.update { $0.exitStatus = code }
        }.start()
    }

    private func update(_ body: (inout State) -> Void) {
        self.condition.lock()
        self.state.withLock { body(&$0) }
        self.condition.broadcast()
        self.condition.unlock()
        self.notify.yield()
    }

    package var stdout: String { String(decoding: self.state.withLock { $0.stdout }, as: UTF8.self) }
    package var stderr: String { String(decoding: self.state.withLock { $0.stderr }, as: UTF8.self) }
    package var isRunning: Bool { self.state.withLock { $0.exitStatus == nil } }
    private var finished: Bool { self.state.withLock { $0.exitStatus != nil && $0.streamsEnded == 2 } }

    /// Waits until `condition` holds, woken by output or exit, never by polling on a timer.
    package func wait(until condition: @Sendable (Executable) -> Bool) async {
        if condition(self) { return }
        for await _ in self.changes {
            if condition(self) { return }
        }
    }

    /// The same, for at most `seconds`: whether `condition` held. (A bound, so a test that goes wrong fails
    /// with what it saw instead of running into its time limit.)
    @discardableResult
    package func wait(seconds: Double, until condition: @escaping @Sendable (Executable) -> Bool) async -> Bool {
        await withTaskGroup(of: Bool.self) { group in
            group.addTask {
                await self.wait(until: condition)
                return condition(self)
            }
            group.addTask {
                try? await Task.sleep(for: .seconds(seconds))
                return false
            }
            let first = await group.next() ?? false
            group.cancelAll()
            return first || condition(self)
        }
    }

    /// Waits for the process to exit and its output to end; returns its exit status (128+N for signal N).
    package func exitStatus() async -> Int32 {
        await self.wait { $0.finished }
        return self.state.withLock { $0.exitStatus ?? -1 }
    }

    /// The same, blocking the calling thread.
    package func exitStatusBlocking() -> Int32 {
        self.condition.lock()
        while !self.finished { self.condition.wait() }
        self.condition.unlock()
        return self.state.withLock { $0.exitStatus ?? -1 }
    }

    /// Writes `text` to the process's standard input (opened with `keepStdinOpen`).
    package func send(_ text: String) {
        self.stdinFD.withLock { fd in
            guard fd >= 0 else { return }
            let bytes = Array(text.utf8)
            var offset = 0
            while offset < bytes.count {
                let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + offset, bytes.count - offset) }
                if n <= 0 { if errno == EINTR { continue } else { return } }
                offset += n
            }
        }
    }

    package func closeStdin() {
        self.stdinFD.withLock { fd in
            if fd >= 0 { close(fd) }
            fd = -1
        }
    }

    package func terminate(signal: Int32 = SIGTERM) {
        if self.isRunning { kill(self.pid, signal) }
    }

    deinit {
        self.closeStdin()
        if self.state.withLock({ $0.exitStatus == nil }) { kill(self.pid, SIGKILL) }
    }
}

/// glibc's `posix_spawn_file_actions_addclosefrom_np` (2.34 and later), which Swift's Glibc module does not
/// export.
private let addCloseFrom: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32)? = {
    guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "posix_spawn_file_actions_addclosefrom_np")
    else { return nil }
    return unsafeBitCast(
        symbol, to: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32).self)
}()

/// Runs a command to completion and returns its exit status and its stdout and stderr together.
package func run(_ executable: String, _ arguments: [String]) throws -> (status: Int32, output: String) {
    let process = try Executable(executable, arguments)
    let status = process.exitStatusBlocking()
    return (status, process.stdout + process.stderr)
}

let spawnLock = NSLock()
