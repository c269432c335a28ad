import Foundation
import LengthEcho
import LengthEchoTestSupport
import Testing

/// The reference tables in docs/ are the code's: every field of the connection line and every `end=` value in
/// docs/server.md, every metric family in docs/operations.md, no more and no fewer.
@Suite("The reference tables in docs/")
struct DocumentationTests {
    /// The first cells of a file's table rows that name one code-spelled thing: "| `name` | ...".
    static func names(in file: String, section: String) throws -> [String] {
        let text = try String(contentsOfFile: TestCertificates.packageRoot + "/docs/" + file, encoding: .utf8)
        let start = try #require(text.range(of: "\n## " + section + "\n"), "docs/\(file) has no section \(section)")
        let rest = text[start.upperBound...]
        let body = rest.range(of: "\n## ").map { rest[..<$0.lowerBound] } ?? rest
        return body.split(separator: "\n").compactMap { line in
            let cells = line.split(separator: "|", omittingEmptySubsequences: false)
            guard line.hasPrefix("| `"), cells.count > 2 else { return nil }
            let first = cells[1].trimmingCharacters(in: .whitespaces)
            guard first.hasPrefix("`"), first.hasSuffix("`"), first.count > 2 else { return nil }
            return String(first.dropFirst().dropLast())
        }
    }

    @Test("the connection line's fields and end values")
    func connectionLine() throws {
        let names = try Self.names(in: "server.md", section: "The connection line")
        let fields = ConnectionSummary.fieldNames
        let ends = ConnectionSummary.End.allCases.map(\.rawValue)
        #expect(Array(names.prefix(fields.count)) == fields)
        #expect(Array(names.dropFirst(fields.count)) == ends)
    }

    @Test("the metric families")
    func metrics() throws {
        let names = try Self.names(in: "operations.md", section: "The status port").filter {
            $0.hasPrefix("length_echo_")
        }
        let families = Set(ServerMetrics.help.keys).union(["length_echo_reloads_total"])
        #expect(Set(names) == families)
        #expect(names.count == families.count)
    }

    @Test(
        "the client's and bench's flags in docs/client-and-bench.md are what --help prints",
        arguments: ["client", "bench"])
    func flags(_ program: String) async throws {
        let text = try String(
            contentsOfFile: TestCertificates.packageRoot + "/docs/client-and-bench.md", encoding: .utf8)
        let heading = try #require(
            text.range(of: "### Every flag of " + (program == "client" ? "the client" : "bench")))
        let open = try #require(text.range(of: "```\n", range: heading.upperBound..<text.endIndex))
        let close = try #require(text.range(of: "\n```", range: open.upperBound..<text.endIndex))
        let help = try Executable(program, ["--help"])
        #expect(await help.exitStatus() == 0)
        let options = try #require(help.stdout.range(of: "OPTIONS:"))
        #expect(
            String(text[open.upperBound..<close.lowerBound])
                == help.stdout[options.lowerBound...].trimmingCharacters(in: .newlines))
    }
}
