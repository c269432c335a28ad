import Foundation
import LengthEchoTestSupport
import Testing

/// Every relative link and anchor in the package's Markdown resolves, and the unit's `Documentation=` too.
@Suite("Links in the documentation")
struct LinkTests {
    /// GitHub's anchor for a heading: lower case, spaces as dashes, punctuation other than dashes dropped.
    static func anchor(_ heading: Substring) -> String {
        String(
            heading.drop { $0 == "#" }.trimmingCharacters(in: .whitespaces).lowercased()
                .compactMap { $0 == " " ? "-" : ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" ? $0 : nil) })
    }

    static func anchors(in path: String) -> Set<String> {
        let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
        var inCode = false
        var found = Set<String>()
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            if line.hasPrefix("```") { inCode.toggle() }
            if !inCode && line.hasPrefix("#") { found.insert(Self.anchor(line)) }
        }
        return found
    }

    @Test("each relative link names a file that exists, and each #anchor a heading of its file")
    func links() throws {
        let root = TestCertificates.packageRoot
        var files = ["README.md", "BENCHMARKS.md", "CHANGELOG.md"].filter {
            FileManager.default.fileExists(atPath: root + "/" + $0)
        }
        if let docs = try? FileManager.default.contentsOfDirectory(atPath: root + "/docs") {
            files += docs.filter { $0.hasSuffix(".md") }.map { "docs/" + $0 }
        }
        var broken: [String] = []
        for file in files {
            let text = try String(contentsOfFile: root + "/" + file, encoding: .utf8)
            let directory = (file as NSString).deletingLastPathComponent
            let pattern = try NSRegularExpression(pattern: #"\]\(([^)\s]+)\)"#)
            for match in pattern.matches(in: text, range: NSRange(text.startIndex..., in: text)) {
                guard let range = Range(match.range(at: 1), in: text) else { continue }
                let target = String(text[range])
                if target.hasPrefix("http://") || target.hasPrefix("https://") || target.hasPrefix("mailto:") {
                    continue
                }
                let parts = target.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false)
                let path =
                    parts[0].isEmpty ? file : (directory.isEmpty ? String(parts[0]) : directory + "/" + parts[0])
                guard FileManager.default.fileExists(atPath: root + "/" + path) else {
                    broken.append("\(file): \(target) (no such file)")
                    continue
                }
                if parts.count == 2, path.hasSuffix(".md"),
                    !Self.anchors(in: root + "/" + path).contains(String(parts[1]))
                {
                    broken.append("\(file): \(target) (no such heading)")
                }
            }
        }
        #expect(broken.isEmpty, "\(broken)")
    }
}
