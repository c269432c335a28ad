import LengthEchoTestSupport
import NIOCore
import Testing

@testable import LengthEcho

/// `ServerConfiguration.validate()`: the one place a rule about the configuration is written. Each problem names
/// its settings, which a program spells its own way.
@Suite("Configuration: one validation, every problem named")
struct ConfigurationValidationTests {
    @Test("the defaults are valid; each rule gives one problem, naming the settings it is about")
    func rules() {
        #expect(ServerConfiguration().problems().isEmpty)
        var configuration = ServerConfiguration()
        configuration.port = 70000
        configuration.maximumMessageLength = -1
        configuration.idleTimeout = .zero
        configuration.drainTimeout = .hours(8 * 24)
        configuration.threads = 0
        configuration.handshakesPerSecondPerAddress = 5
        configuration.proxyProtocol = .init(trustedSources: [])
        let problems = configuration.problems().map(\.description)
        #expect(
            problems == [
                "port must be 0...65535", "maximumMessageLength must be 0...1073741824 (1 GiB)",
                "threads must be 1...256", "idleTimeout must be more than 0 to 604800 seconds (a week)",
                "drainTimeout must be 0 to 604800 seconds (a week)", "handshakesPerSecondPerAddress needs tls",
                "proxyProtocol needs proxyTrustedSources: the balancers' addresses (a header from anyone else would be believed)",
            ], "\(problems)")
    }

    @Test(
        "TLS: client certificates need a CA and the CA needs them asked for; allow lists and CRLs need them asked for")
    func tls() {
        var configuration = ServerConfiguration()
        var tls = TLSServerSettings()
        tls.clientAuthentication = .required
        tls.allowedClients = IdentityPolicy(commonNames: ["a"])
        configuration.tls = tls
        #expect(
            configuration.problems().map(\.description) == [
                "clientAuthentication required needs clientCA: the CA that signs client certificates"
            ])
        tls.clientAuthentication = .none
        tls.clientCA = "ca.pem"
        tls.revocation = RevocationPolicy(crlFile: "crl.pem")
        configuration.tls = tls
        let named = configuration.problems().map { $0.description { "<\($0.rawValue)>" } }
        #expect(
            named == [
                "<clientCA> needs <clientAuthentication> optional or required",
                "<allowedClients> need <clientAuthentication> optional or required",
                "<revocation> needs <clientAuthentication> optional or required",
            ], "\(named)")
    }

    @Test("a server is not started from an invalid configuration: start throws the first problem")
    func startRefuses() async {
        var configuration = ServerConfiguration()
        configuration.port = 0
        configuration.hosts = ["127.0.0.1"]
        configuration.maximumConnections = 0
        await #expect(throws: ServerConfiguration.Problem.self) {
            try await LengthEchoServer.start(configuration: configuration)
        }
    }
}
