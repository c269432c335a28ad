import LengthEchoCore
import LengthEchoTestSupport
import NIOCore
import NIOEmbedded
import Testing

@testable import LengthEchoTLS

/// What a TLS handler keeps and lets go of: session tickets across key rotations, the expected server name,
/// and itself once its connection is over.
@Suite("TLS handler lifetimes", .timeLimit(.minutes(1)))
struct TLSLifetimeTests {
    @Test("once closed, nothing keeps the handler (and its SSL) alive: no timer outlives the connection")
    func nothingOutlivesTheConnection() async throws {
        let certificates = try await TestCertificates.main.value
        let loop = EmbeddedEventLoop()  // outlives the channels, as a server's event loop does
        weak var serverHandler: TLSHandler?
        weak var clientHandler: TLSHandler?
        do {
            let pair = try TLSHandlerTests.Pair(certificates, loop: loop)
            defer { pair.finish() }
            try pair.shuttle()
            serverHandler = try pair.server.pipeline.syncOperations.handler(type: TLSHandler.self)
            clientHandler = try pair.client.pipeline.syncOperations.handler(type: TLSHandler.self)
            // The client closes first; the server, its close_notify already in, closes after.
            pair.client.close(promise: nil)
            try pair.shuttle()
            pair.server.close(promise: nil)
            try pair.shuttle()
            #expect(!pair.server.isActive && !pair.client.isActive)
        }
        loop.run()  // the channels' own deferred clean-up; no virtual time passes
        #expect(serverHandler == nil, "a timer armed after the close still holds the server's handler")
        #expect(clientHandler == nil, "a timer still holds the client's handler")
    }

    @Test("an empty server name is refused rather than switching the name check off")
    func emptyServerName() async throws {
        let certificates = try await TestCertificates.main.value
        #expect(throws: TLSError(.configuration, "the server name to verify is empty")) {
            _ = try TLSHandler(context: try certificates.clientContext(), expectedHost: "")
        }
    }

    /// One connection between `server` and `client` on EmbeddedChannels: whether the handshake resumed, and the
    /// session (with the ticket the server sent after it) to resume next time.
    private func connection(
        server: TLSContext, client: TLSContext, resuming session: TLSSession?
    ) throws
        -> (resumed: Bool, session: TLSSession?)
    {
        let serverChannel = EmbeddedChannel()
        let clientChannel = EmbeddedChannel()
        let clientRecorder = TLSHandlerTests.Recorder()
        try serverChannel.pipeline.syncOperations.addHandlers([TLSHandler(context: server), TLSHandlerTests.Recorder()])
        let clientHandler = try TLSHandler(context: client, expectedHost: "localhost", resuming: session)
        try clientChannel.pipeline.syncOperations.addHandlers([clientHandler, clientRecorder])
        let address = try SocketAddress(ipAddress: "127.0.0.1", port: 1)
        try serverChannel.connect(to: address).wait()
        try clientChannel.connect(to: address).wait()
        var moved = true
        while moved {
            moved = false
            while let bytes = try clientChannel.readOutbound(as: ByteBuffer.self) {
                try serverChannel.writeInbound(bytes)
                moved = true
            }
            while let bytes = try serverChannel.readOutbound(as: ByteBuffer.self) {
                try clientChannel.writeInbound(bytes)
                moved = true
            }
        }
        let result = (clientRecorder.handshakes.first?.resumed ?? false, clientHandler.session)
        for channel in [clientChannel, serverChannel] {
            channel.close(promise: nil)
            channel.embeddedEventLoop.advanceTime(by: .minutes(1))
            _ = try? channel.finish(acceptAlreadyClosed: true)
        }
        return result
    }

    @Test(
        "session tickets under rotating keys: a ticket from before one rotation resumes, from before two it does not",
        arguments: [TLSVersion.tls12, .tls13]
    )
    func ticketKeyRotation(version: TLSVersion) async throws {
        let certificates = try await TestCertificates.main.value
        let server = try certificates.serverContext()
        let client = try certificates.clientContext(maximumVersion: version)
        let first = try self.connection(server: server, client: client, resuming: nil)
        #expect(!first.resumed)
        let session = try #require(first.session)
        #expect(try self.connection(server: server, client: client, resuming: session).resumed)

        server.rotateTicketKeys()
        let afterOne = try self.connection(server: server, client: client, resuming: session)
        #expect(afterOne.resumed, "the previous key still decrypts its tickets")
        server.rotateTicketKeys()
        #expect(!(try self.connection(server: server, client: client, resuming: session).resumed))
        // The ticket renewed after the first rotation is under the key that is now the previous one.
        #expect(try self.connection(server: server, client: client, resuming: afterOne.session).resumed)
    }
}
