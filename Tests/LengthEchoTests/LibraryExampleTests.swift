import Foundation
import LengthEchoTestSupport
import Testing

@Suite("The README's library example", .timeLimit(.minutes(1)))
struct LibraryExampleTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()

    @Test("the README's block is Examples/library-example/main.swift, which imports LengthEcho alone and runs")
    func example() async throws {
        let readme = try String(contentsOf: Self.root.appendingPathComponent("README.md"), encoding: .utf8)
        let section = try #require(readme.range(of: "## As a library"))
        let open = try #require(readme.range(of: "```swift\n", range: section.upperBound..<readme.endIndex))
        let close = try #require(readme.range(of: "```", range: open.upperBound..<readme.endIndex))
        let source = try String(
            contentsOf: Self.root.appendingPathComponent("Examples/library-example/main.swift"), encoding: .utf8)
        #expect(String(readme[open.upperBound..<close.lowerBound]) == source)
        #expect(source.split(separator: "\n").filter { $0.hasPrefix("import ") } == ["import LengthEcho"])
        let run = try Executable("library-example", [])
        #expect(await run.exitStatus() == 0)
        #expect(run.stdout.split(separator: "\n").prefix(2) == ["11 : test_string", #"["1 : a", "1 : b"]"#])
    }
}
