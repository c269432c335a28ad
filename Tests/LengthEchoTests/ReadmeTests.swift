import Foundation
import LengthEchoTestSupport
import Testing

/// The README's commands, run as written: the quick start, TLS in three commands and line mode. Only the port
/// differs (each server listens on 127.0.0.1 at a port the system picks, and the commands after it are pointed
/// there), and `swift run NAME` runs the executable the tests were built with. A comment `# prints TEXT` is what
/// that command must print. Each section runs in a folder of its own, as a new user's checkout would be.
@Suite("The README's commands", .timeLimit(.minutes(2)))
struct ReadmeTests {
    /// The README's shell blocks in the part before its first `##` heading (the quick start) and in the sections
    /// whose headings start with one of `sections`.
    static func commands(sections: [String]) throws -> [String: [String]] {
        let readme = try String(contentsOfFile: TestCertificates.packageRoot + "/README.md", encoding: .utf8)
        var found: [String: [String]] = [:]
        var section: String? = "quick start"
        var inBlock = false
        for line in readme.split(separator: "\n", omittingEmptySubsequences: false) {
            if line.hasPrefix("## ") {
                let heading = line.dropFirst(3)
                section = sections.first { heading.hasPrefix($0) }
            } else if line == "```sh" {
                inBlock = true
            } else if line == "```" {
                inBlock = false
            } else if inBlock, let section {
                found[section, default: []].append(String(line))
            }
        }
        return found
    }

    /// A command and what its comment says it prints, if it says.
    static func split(_ line: String) -> (command: String, prints: String?) {
        guard let range = line.range(of: #"\s+#\s"#, options: .regularExpression) else {
            return (line.trimmingCharacters(in: .whitespaces), nil)
        }
        let comment = line[range.upperBound...].trimmingCharacters(in: .whitespaces)
        return (
            String(line[..<range.lowerBound]),
            comment.hasPrefix("prints ") ? String(comment.dropFirst("prints ".count)) : nil
        )
    }

    /// Runs one section's commands in `folder`; returns how many printed what their comment says.
    static func run(_ lines: [String], in folder: String) async throws -> Int {
        // `nc` as the README means it, netcat-openbsd's, whatever `nc` is on this machine.
        let tools = folder + "/.tools"
        try FileManager.default.createDirectory(atPath: tools, withIntermediateDirectories: true)
        let netcat = try #require(
            ["/usr/bin/nc.openbsd", "/bin/nc.openbsd"].first { FileManager.default.isExecutableFile(atPath: $0) },
            "nc.openbsd is missing (Debian's netcat-openbsd)")
        try FileManager.default.createSymbolicLink(atPath: tools + "/nc", withDestinationPath: netcat)
        let products = Executable.productsDirectory
        var server: (process: Executable, port: Int)?
        defer { server?.process.terminate(signal: SIGKILL) }
        var checked = 0
        for line in lines where !line.trimmingCharacters(in: .whitespaces).isEmpty {
            let (command, prints) = Self.split(line)
            let words = command.split(separator: " ").map(String.init)
            if command == ".ci/run" { continue }  // the suite itself
            var shell: String
            if words.starts(with: ["swift", "run", "server"]) {
                if let running = server {
                    running.process.terminate()
                    #expect(await running.process.exitStatus() == 0)
                }
                let flags = words.dropFirst(3).joined(separator: " ")
                let process = try Executable(
                    "/bin/sh", ["-c", "cd '\(folder)' && exec '\(products)/server' \(flags) --host 127.0.0.1 --port 0"])
                await process.wait { $0.stderr.contains("listening on") || !$0.isRunning }
                let listening = try #require(
                    process.stderr.split(separator: "\n").first { $0.contains("listening on") },
                    "`\(command)` did not start: \(process.stderr)")
                let port = try #require(
                    listening.split(separator: ":").last.flatMap { Int($0.prefix(while: \.isNumber)) })
                server = (process, port)
                continue
            } else if words.starts(with: ["swift", "run"]) && words.count > 2 {
                let port = try #require(server?.port, "`\(command)` needs a server started before it")
                shell = "exec '\(products)/\(words[2])' --port \(port) " + words.dropFirst(3).joined(separator: " ")
            } else if words.first?.hasPrefix("scripts/") == true {
                shell = "'\(TestCertificates.packageRoot)/'" + command
            } else {
                shell =
                    "PATH='\(tools)':\"$PATH\"; "
                    + command.replacingOccurrences(of: " 4000", with: " \(server?.port ?? 4000)")
            }
            let process = try Executable("/bin/sh", ["-c", "cd '\(folder)' && " + shell])
            #expect(await process.exitStatus() == 0, "`\(command)`: \(process.stderr)")
            if let prints {
                #expect(process.stdout == prints + "\n", "`\(command)` printed \(process.stdout)")
                checked += 1
            }
        }
        if let running = server {
            running.process.terminate()
            #expect(await running.process.exitStatus() == 0)
        }
        return checked
    }

    @Test(
        "the quick start, TLS in three commands and line mode, as written",
        arguments: ["quick start", "TLS in three commands", "Line mode"])
    func section(_ name: String) async throws {
        let commands = try Self.commands(sections: ["TLS in three commands", "Line mode"])
        let lines = try #require(commands[name], "the README has no \(name) commands")
        if name == "quick start" {
            // The first screen's two commands: one runs the server, one runs the tests.
            #expect(
                lines.prefix(2).map { Self.split($0).command.trimmingCharacters(in: .whitespaces) } == [
                    "swift run server", ".ci/run",
                ])
        }
        let folder = NSTemporaryDirectory() + "length-echo-readme-\(getpid())-\(name.split(separator: " ")[0])"
        try? FileManager.default.removeItem(atPath: folder)
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let checked = try await Self.run(lines, in: folder)
        #expect(checked >= 1, "no command in \(name) says what it prints")
    }
}
