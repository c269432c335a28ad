import Foundation
import LengthEcho
import LengthEchoCore
import LengthEchoTLS
import LengthEchoTestSupport
import Testing

/// `--framing line`: what a person typing at the server with nc or openssl s_client relies on.
@Suite("Line framing over real sockets", .timeLimit(.minutes(1)))
struct LineFramingTests {
    private static let newline = UInt8(ascii: "\n")

    @Test("lines in, lines out: \\r\\n endings, pipelining, NUL as plain bytes, errors end with a newline")
    func rawLines() async throws {
        let server = try await startServer {
            $0.framing = .line
            $0.maximumMessageLength = 64
        }
        let port = server.port
        try await blocking {
            let socket = try RawSocket.connect(port: port)
            try socket.write("hello\n")
            #expect(try socket.readReplyText(until: Self.newline) == "5 : hello")
            try socket.write("typed at a terminal\r\n")
            #expect(try socket.readReplyText(until: Self.newline) == "19 : typed at a terminal")
            try socket.write("a\nbb\n\n")
            #expect(try socket.readReplyText(until: Self.newline) == "1 : a")
            #expect(try socket.readReplyText(until: Self.newline) == "2 : bb")
            #expect(try socket.readReplyText(until: Self.newline) == "0 : ")
            try socket.write(bytes("nul\0inside\n"))
            #expect(try socket.readReply(until: Self.newline) == bytes("10 : nul\0inside"))
            try socket.write(String(repeating: "x", count: 65) + "\n")
            #expect(try socket.readReplyText(until: Self.newline) == "error: message exceeds the 64-byte limit")
            #expect(try socket.readToEnd().isEmpty)
        }
        try await blocking {
            // A last line without its newline is answered when the client half-closes.
            let socket = try RawSocket.connect(port: port)
            try socket.write("bye")
            socket.shutdownWrite()
            #expect(try socket.readToEnd() == bytes("3 : bye\n"))
        }
        await server.shutdown()
    }

    @Test("NUL framing, the default, still speaks the original protocol byte for byte")
    func nulStaysDefault() async throws {
        let server = try await startServer()
        let port = server.port
        try await blocking {
            let socket = try RawSocket.connect(port: port)
            try socket.write(bytes("line\nbreak\0"))
            #expect(try socket.readReply() == bytes("10 : line\nbreak"))
        }
        await server.shutdown()
    }

    @Test("the client library in line mode, plaintext and TLS, and what it refuses to send")
    func clientLibrary() async throws {
        let certificates = try await TestCertificates.main.value
        let context = certificates.serverSettings()
        for tls in [false, true] {
            let server = try await startServer {
                $0.framing = .line
                if tls { $0.tls = context }
            }
            var configuration = ClientConfiguration(port: server.port)
            configuration.framing = .line
            if tls {
                configuration.tls = try certificates.clientContext()
                configuration.serverName = "localhost"
            }
            let client = LengthEchoClient(configuration: configuration)
            #expect(try await client.send(bytes("hello")).text == "5 : hello")
            let replies = try await client.send(pipelined: [bytes("a"), bytes("b\0c"), []])
            #expect(replies.map(\.text) == ["1 : a", "3 : b\0c", "0 : "])
            await #expect(throws: LengthEchoError.messageContainsTerminator(.line)) {
                try await client.send(bytes("two\nlines"))
            }
            await #expect(throws: LengthEchoError.messageEndsWithCarriageReturn) {
                try await client.send(bytes("cr\r"))
            }
            await client.close()
            await server.shutdown()
        }
    }

    @Test("`printf 'hello\\n' | nc -N` prints `5 : hello`")
    func netcat() async throws {
        let server = try await startServer { $0.framing = .line }
        let port = server.port
        let result = try await blocking {
            // netcat-openbsd's own name: `nc` may be ncat, which has no -N (.ci/run installs netcat-openbsd).
            try run("/bin/sh", ["-c", "printf 'hello\\n' | timeout 10 nc.openbsd -N 127.0.0.1 \(port)"])
        }
        #expect(result.status == 0)
        #expect(result.output == "5 : hello\n")
        await server.shutdown()
    }

    @Test("a person at `openssl s_client -quiet` types lines and reads replies over TLS")
    func sClientTyping() async throws {
        let certificates = try await TestCertificates.main.value
        let context = certificates.serverSettings()
        let server = try await startServer {
            $0.framing = .line
            $0.tls = context
        }
        let session = try Executable(
            "/usr/bin/openssl",
            [
                "s_client", "-connect", "127.0.0.1:\(server.port)", "-servername", "localhost", "-CAfile",
                certificates.ca,
                "-verify_return_error", "-quiet",
            ],
            stdin: Data("hello\r\nsecond line\r\n".utf8),
            keepStdinOpen: true
        )
        await session.wait { $0.stdout.contains("11 : second line\n") || !$0.isRunning }
        #expect(session.stdout == "5 : hello\n11 : second line\n", "\(session.stderr)")
        session.terminate(signal: SIGKILL)  // a person closing the terminal
        _ = await session.exitStatus()
        await server.shutdown()
    }

    @Test("the executables: `server --framing line` and `client --framing line`")
    func executables() async throws {
        let (server, port) = try await startServerExecutable(["--framing", "line"])
        #expect(server.stderr.contains("line framing"))
        let client = try Executable("client", ["--port", "\(port)", "--framing", "line", "hello", "안녕"])
        #expect(await client.exitStatus() == 0)
        #expect(client.stdout == "5 : hello\n6 : 안녕\n")
        // The wrong framing is named: a NUL-framed client waits for a NUL that a line server never sends.
        let mismatched = try Executable("client", ["--port", "\(port)", "--reply-timeout", "1", "x"])
        #expect(await mismatched.exitStatus() == 1)
        server.terminate()
        #expect(await server.exitStatus() == 0)
        #expect(server.stdout.contains("receive: hello\n"))
    }
}
