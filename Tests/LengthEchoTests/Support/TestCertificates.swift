import Foundation
import LengthEchoTLS

/// Certificates made by `scripts/gen-certs.sh`, as a user would make them, into temporary folders:
/// once per test run, shared by every TLS test.
struct TestCertificates: Sendable {
    let directory: String
    var ca: String { self.directory + "/ca.pem" }
    var serverCertificate: String { self.directory + "/server.pem" }
    var serverKey: String { self.directory + "/server.key" }
    var clientCertificate: String { self.directory + "/client.pem" }
    var clientKey: String { self.directory + "/client.key" }

    /// The usual set (ECDSA P-256), another CA's set, an RSA set, and a set whose server certificate expired.
    static let main = Task { try generate("main") }
    static let other = Task { try generate("other") }
    static let rsa = Task { try generate("rsa", ["--rsa"]) }
    static let expired = Task { try generate("expired", ["--expired"]) }

    static let packageRoot: String = {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().deletingLastPathComponent().path
    }()

    private static let root: String = {
        let path = NSTemporaryDirectory() + "length-echo-certs-\(getpid())"
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }()

    struct GenerationFailed: Error, CustomStringConvertible {
        let description: String
    }

    static func generate(_ name: String, _ flags: [String] = []) throws -> TestCertificates {
        let directory = Self.root + "/" + name
        let result = try run("/bin/bash", [Self.packageRoot + "/scripts/gen-certs.sh", "--out", directory, "--force"] + flags)
        guard result.status == 0 else {
            throw GenerationFailed(description: "gen-certs.sh failed: \(result.output)")
        }
        return TestCertificates(directory: directory)
    }

    func serverContext(
        clientAuthentication: ClientAuthentication = .none,
        minimumVersion: TLSVersion = .tls12
    ) throws -> TLSContext {
        try TLSContext.server(
            certificateChain: self.serverCertificate,
            privateKey: self.serverKey,
            clientCA: clientAuthentication == .none ? nil : self.ca,
            clientAuthentication: clientAuthentication,
            minimumVersion: minimumVersion
        )
    }

    func clientContext(withCertificate: Bool = false, maximumVersion: TLSVersion = .tls13) throws -> TLSContext {
        try TLSContext.client(
            trustRoots: .file(self.ca),
            certificateChain: withCertificate ? self.clientCertificate : nil,
            privateKey: withCertificate ? self.clientKey : nil,
            maximumVersion: maximumVersion
        )
    }
}

