import Foundation
import LengthEcho
import LengthEchoTestSupport
import Testing

@Suite("One version")
struct VersionTests {
    @Test("server, client and bench --version print LengthEchoRelease.version, CHANGELOG.md's top entry")
    func version() throws {
        let changelog = try String(contentsOfFile: TestCertificates.packageRoot + "/CHANGELOG.md", encoding: .utf8)
        let top = try #require(changelog.split(separator: "\n").first { $0.hasPrefix("## ") })
        let named = try #require(top.dropFirst(3).split(separator: " ").first.map(String.init))
        #expect(named == LengthEchoRelease.version)
        for program in ["server", "client", "bench"] {
            let run = try Executable(program, ["--version"])
            #expect(run.exitStatusBlocking() == 0)
            #expect(run.stdout == LengthEchoRelease.version + "\n", "\(program): \(run.stdout)")
        }
    }
}
