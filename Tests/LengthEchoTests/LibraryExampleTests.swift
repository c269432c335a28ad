import Foundation
import LengthEchoTestSupport
import Testing

/// The library's examples as the README and the DocC article show them: each block is an example program of the
/// package, word for word, which imports `LengthEcho` alone and runs.
@Suite("The library examples", .timeLimit(.minutes(1)))
struct LibraryExampleTests {
    /// The Swift blocks of a Markdown file, in order.
    static func swiftBlocks(_ path: String) throws -> [String] {
        let text = try String(contentsOfFile: TestCertificates.packageRoot + "/" + path, encoding: .utf8)
        return text.components(separatedBy: "```swift\n").dropFirst().compactMap {
            $0.components(separatedBy: "```").first
        }
    }

    static func source(_ example: String) throws -> String {
        try String(contentsOfFile: TestCertificates.packageRoot + "/Examples/\(example)/main.swift", encoding: .utf8)
    }

    @Test("the README's block and the article's first are Examples/library-example, which imports LengthEcho and runs")
    func plaintext() async throws {
        let source = try Self.source("library-example")
        #expect(try Self.swiftBlocks("README.md") == [source])
        #expect(
            try Self.swiftBlocks("Sources/LengthEcho/LengthEcho.docc/GettingStarted.md").dropFirst().first == source)
        #expect(source.split(separator: "\n").filter { $0.hasPrefix("import ") } == ["import LengthEcho"])
        let run = try Executable("library-example", [])
        #expect(await run.exitStatus() == 0)
        #expect(run.stdout.split(separator: "\n").prefix(2) == ["11 : test_string", #"["1 : a", "1 : b"]"#])
    }

    @Test(
        "the article's TLS block is Examples/tls-example, which imports LengthEcho and runs with gen-certs.sh's files")
    func tls() async throws {
        let source = try Self.source("tls-example")
        #expect(try Self.swiftBlocks("Sources/LengthEcho/LengthEcho.docc/GettingStarted.md").last == source)
        #expect(source.split(separator: "\n").filter { $0.hasPrefix("import ") } == ["import LengthEcho"])
        let certificates = try await TestCertificates.main.value
        let folder = (certificates.ca as NSString).deletingLastPathComponent
        let run = try Executable("tls-example", [folder])
        #expect(await run.exitStatus() == 0, "\(run.stderr)")
        #expect(run.stdout.split(separator: "\n").first == "11 : test_string")
    }
}
