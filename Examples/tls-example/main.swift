import LengthEcho

// A TLS server and a client that verifies it, with the files `scripts/gen-certs.sh` writes to certs/.
let certificates = CommandLine.arguments.dropFirst().first ?? "certs"
var tls = TLSServerSettings()
tls.certificateChain = certificates + "/server.pem"
tls.privateKey = certificates + "/server.key"
var configuration = ServerConfiguration()
configuration.hosts = ["127.0.0.1"]
configuration.port = 0  // any free port
configuration.tls = tls
let server = try await LengthEchoServer.start(configuration: configuration)

var clientConfiguration = ClientConfiguration(host: "127.0.0.1", port: server.port)
clientConfiguration.tls = try TLSContext.client(trustRoots: .file(certificates + "/ca.pem"))
clientConfiguration.serverName = "localhost"  // the name the certificate is checked against
let client = LengthEchoClient(configuration: clientConfiguration)
print(try await client.send(Array("test_string".utf8)).text)  // 11 : test_string
await client.close()
await server.shutdown()
