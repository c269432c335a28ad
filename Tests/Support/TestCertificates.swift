import Foundation
import LengthEchoTLS

/// Certificates made by `scripts/gen-certs.sh`, as a user would make them, into temporary folders:
/// once per test run, shared by every TLS test.
package struct TestCertificates: Sendable {
    package let directory: String
    package var ca: String { self.directory + "/ca.pem" }
    package var serverCertificate: String { self.directory + "/server.pem" }
    package var serverKey: String { self.directory + "/server.key" }
    package var clientCertificate: String { self.directory + "/client.pem" }
    package var clientKey: String { self.directory + "/client.key" }

    /// The usual set (ECDSA P-256), another CA's set, an RSA set, and a set whose server certificate expired.
    package static let main = Task { try generate("main") }
    package static let other = Task { try generate("other") }
    package static let rsa = Task { try generate("rsa", ["--rsa"]) }
    package static let expired = Task { try generate("expired", ["--expired"]) }

    package static let packageRoot: String = {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().path
    }()

    private static let root: String = {
        let path = NSTemporaryDirectory() + "length-echo-certs-\(getpid())"
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }()

    package struct GenerationFailed: Error, CustomStringConvertible {
        package let description: String
    }

    package static func generate(_ name: String, _ flags: [String] = []) throws -> TestCertificates {
        let directory = Self.root + "/" + name
        let result = try run(
            "/bin/bash", [Self.packageRoot + "/scripts/gen-certs.sh", "--out", directory, "--force"] + flags)
        guard result.status == 0 else {
            throw GenerationFailed(description: "gen-certs.sh failed: \(result.output)")
        }
        return TestCertificates(directory: directory)
    }

    /// The test server's TLS settings (what a `ServerConfiguration` takes), its context built by the server.
    package func serverSettings(
        clientAuthentication: ClientAuthentication = .none,
        minimumVersion: TLSVersion = .tls12
    ) -> TLSServerSettings {
        var settings = TLSServerSettings()
        settings.certificateChain = self.serverCertificate
        settings.privateKey = self.serverKey
        settings.clientCA = clientAuthentication == .none ? nil : self.ca
        settings.clientAuthentication = clientAuthentication
        settings.minimumVersion = minimumVersion
        return settings
    }

    package func serverContext(
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

    package func clientContext(withCertificate: Bool = false, maximumVersion: TLSVersion = .tls13) throws -> TLSContext
    {
        try TLSContext.client(
            trustRoots: .file(self.ca),
            certificateChain: withCertificate ? self.clientCertificate : nil,
            privateKey: withCertificate ? self.clientKey : nil,
            maximumVersion: maximumVersion
        )
    }
}

/// The bytes of a string, for expectations.
package func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }
