import ArgumentParser
import LengthEcho
import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

@main
struct ClientCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "client",
        abstract: "The length-echo client: sends each message and prints the server's reply.",
        discussion: """
            `client test_string` prints `11 : test_string`, as the original C client does. Several messages \
            get one reply per line, in order; `-` reads messages from standard input, one per line.
            """
    )

    @Argument(help: "Messages to send; `-` reads them from standard input, one per line.")
    var messages: [String]

    @Option(name: .long, help: "The server's host name or IPv4/IPv6 address.")
    var host = "127.0.0.1"

    @Option(name: .long, help: "The server's port.")
    var port = 4000

    @Option(name: .customLong("connect-timeout"), help: "Seconds to wait for the connection.")
    var connectTimeout: Double = 5

    @Option(name: .customLong("reply-timeout"), help: "Seconds to wait for each reply.")
    var replyTimeout: Double = 30

    func validate() throws {
        guard !self.messages.isEmpty else { throw ValidationError("give at least one message, or - to read stdin") }
        guard (1...65535).contains(self.port) else { throw ValidationError("--port must be 1...65535") }
        guard self.connectTimeout > 0, self.replyTimeout > 0 else { throw ValidationError("timeouts must be positive") }
    }

    func run() async throws {
        var configuration = ClientConfiguration(host: self.host, port: self.port)
        configuration.connectTimeout = .nanoseconds(Int64(self.connectTimeout * 1e9))
        configuration.replyTimeout = .nanoseconds(Int64(self.replyTimeout * 1e9))
        let client = LengthEchoClient(configuration: configuration)
        defer { Task { await client.close() } }
        do {
            for argument in self.messages {
                if argument == "-" {
                    while let line = readLine(strippingNewline: true) {
                        try await self.exchange(Array(line.utf8), client: client)
                    }
                } else {
                    try await self.exchange(Array(argument.utf8), client: client)
                }
            }
        } catch {
            let text = "client: \(error)\n"
            _ = text.utf8CString.withUnsafeBufferPointer { write(2, $0.baseAddress, $0.count - 1) }
            throw ExitCode.failure
        }
        await client.close()
    }

    private func exchange(_ message: [UInt8], client: LengthEchoClient) async throws {
        let reply = try await client.send(message)
        var line = reply.bytes
        line.append(UInt8(ascii: "\n"))
        line.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let n = write(1, raw.baseAddress! + offset, raw.count - offset)
                if n <= 0 { return }
                offset += n
            }
        }
    }
}
