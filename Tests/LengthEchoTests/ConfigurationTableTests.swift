import Foundation
import LengthEchoTestSupport
import Testing

@testable import server

/// The table of keys in docs/server.md is the server's: every key, in order, with the default `--check-config` prints and
/// what a reload does with it. It cannot drift from the options.
@Suite("The configuration table in docs/server.md")
struct ConfigurationTableTests {
    @Test("every key, its default and what a reload applies, as the server has them")
    func table() throws {
        let readme = try String(contentsOfFile: TestCertificates.packageRoot + "/docs/server.md", encoding: .utf8)
        let rows = readme.split(separator: "\n").filter { $0.hasPrefix("| `") }.compactMap { row -> [String]? in
            let cells = row.split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) }
            guard cells.count == 3, cells[0].hasPrefix("`"),
                cells[2].hasPrefix("new connections") || cells[2] == "restart" || cells[2].hasPrefix("every log line")
            else { return nil }
            return [cells[0].trimmingCharacters(in: CharacterSet(charactersIn: "`")), cells[1], cells[2]]
        }
        #expect(rows.map { $0[0] } == ServerCommand.keys.map(\.name))
        let check = try Executable("server", ["--check-config"])
        #expect(check.exitStatusBlocking() == 0)
        let defaults = Dictionary(
            uniqueKeysWithValues: check.stdout.split(separator: "\n").dropFirst().map { line -> (String, String) in
                let key = String(line.prefix { $0 != " " })
                let value = line.dropFirst(key.count).trimmingCharacters(in: .whitespaces)
                return (key, value.replacingOccurrences(of: "(default)", with: "").trimmingCharacters(in: .whitespaces))
            })
        let live = ServerCommand.serverReloadableKeys
        for row in rows {
            if row[0] != "threads" { #expect(defaults[row[0]] == row[1], "\(row[0])") }
            let reload =
                ServerCommand.programReloadableKeys.contains(row[0])
                ? "every log line after it"
                : live.contains(row[0])
                    ? "new connections"
                    : ServerCommand.tlsReloadableKeys.contains(row[0])
                        ? "new connections (a new TLS context)" : "restart"
            #expect(row[2] == reload, "\(row[0])")
        }
    }
}
