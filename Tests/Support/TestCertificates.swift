import Foundation
import LengthEchoTLS

/// Certificates made by `scripts/gen-certs.sh`, as a user would make them, into temporary folders:
/// once per test run, shared by every TLS test.
public struct TestCertificates: Sendable {
    public let directory: String
    public var ca: String { self.directory + "/ca.pem" }
    public var serverCertificate: String { self.directory + "/server.pem" }
    public var serverKey: String { self.directory + "/server.key" }
    public var clientCertificate: String { self.directory + "/client.pem" }
    public var clientKey: String { self.directory + "/client.key" }

    /// The usual set (ECDSA P-256), another CA's set, an RSA set, and a set whose server certificate expired.
    public static let main = Task { try generate("main") }
    public static let other = Task { try generate("other") }
    public static let rsa = Task { try generate("rsa", ["--rsa"]) }
    public static let expired = Task { try generate("expired", ["--expired"]) }

    public static let packageRoot: String = {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().path
    }()

    private static let root: String = {
        let path = NSTemporaryDirectory() + "length-echo-certs-\(getpid())"
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }()

    public struct GenerationFailed: Error, CustomStringConvertible {
        public let description: String
    }

    public static func generate(_ name: String, _ flags: [String] = []) throws -> TestCertificates {
        let directory = Self.root + "/" + name
        let result = try run(
            "/bin/bash", [Self.packageRoot + "/scripts/gen-certs.sh", "--out", directory, "--force"] + flags)
        guard result.status == 0 else {
            throw GenerationFailed(description: "gen-certs.sh failed: \(result.output)")
        }
        return TestCertificates(directory: directory)
    }

    public func serverContext(
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

    public func clientContext(withCertificate: Bool = false, maximumVersion: TLSVersion = .tls13) throws -> TLSContext {
        try TLSContext.client(
            trustRoots: .file(self.ca),
            certificateChain: withCertificate ? self.clientCertificate : nil,
            privateKey: withCertificate ? self.clientKey : nil,
            maximumVersion: maximumVersion
        )
    }
}

/// The bytes of a string, for expectations.
public func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }
