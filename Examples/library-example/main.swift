import LengthEcho

var configuration = ServerConfiguration()
configuration.hosts = ["127.0.0.1"]
configuration.port = 0  // any free port
let server = try await LengthEchoServer.start(configuration: configuration)
let client = LengthEchoClient(configuration: ClientConfiguration(host: "127.0.0.1", port: server.port))
print(try await client.send(Array("test_string".utf8)).text)  // 11 : test_string
let replies = try await client.send(pipelined: [Array("a".utf8), Array("b".utf8)])
print(replies.map(\.text))  // ["1 : a", "1 : b"]
await client.close()
await server.shutdown()  // drains
