import LengthEchoCore
import LengthEchoTestSupport
import LengthEchoTLS
import NIOCore
import NIOEmbedded
import Testing

/// The TLS handler alone: two in-memory channels, bytes moved between them by hand.
@Suite("The TLS handler between two in-memory channels", .timeLimit(.minutes(1)))
struct TLSHandlerTests {
    /// Records what reaches the application above the TLS handler.
    final class Recorder: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        var received: [UInt8] = []
        var inputClosed = false
        var handshakes: [TLSConnectionInfo] = []
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            self.received += Array(self.unwrapInboundIn(data).readableBytesView)
        }
        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            if case .inputClosed? = event as? ChannelEvent { self.inputClosed = true }
            if case .handshakeCompleted(let info)? = event as? TLSEvent { self.handshakes.append(info) }
        }
    }

    struct Pair {
        let client = EmbeddedChannel()
        let server = EmbeddedChannel()
        let clientRecorder = Recorder()
        let serverRecorder = Recorder()

        init(_ certificates: TestCertificates) throws {
            try self.server.pipeline.syncOperations.addHandlers([
                TLSHandler(context: try certificates.serverContext()), self.serverRecorder,
            ])
            try self.client.pipeline.syncOperations.addHandlers([
                TLSHandler(context: try certificates.clientContext(), expectedHost: "localhost"), self.clientRecorder,
            ])
            let address = try SocketAddress(ipAddress: "127.0.0.1", port: 1)
            try self.server.connect(to: address).wait()
            try self.client.connect(to: address).wait()
        }

        /// Moves bytes each way until neither side has anything to send; returns how many bytes moved.
        @discardableResult
        func shuttle() throws -> Int {
            var moved = 0
            while true {
                var movedNow = 0
                while let bytes = try self.client.readOutbound(as: ByteBuffer.self) {
                    movedNow += bytes.readableBytes
                    try self.server.writeInbound(bytes)
                }
                while let bytes = try self.server.readOutbound(as: ByteBuffer.self) {
                    movedNow += bytes.readableBytes
                    try self.client.writeInbound(bytes)
                }
                if movedNow == 0 { return moved }
                moved += movedNow
            }
        }
    }

    @Test("handshake, writes queued before it, data both ways, close_notify as a half-close")
    func lifecycle() async throws {
        let pair = try Pair(try await TestCertificates.main.value)
        // Written before the handshake: queued, then sent once it completes.
        pair.client.writeAndFlush(ByteBuffer(bytes: bytes("early\0")), promise: nil)
        try pair.shuttle()
        #expect(pair.clientRecorder.handshakes.count == 1)
        #expect(pair.serverRecorder.handshakes.count == 1)
        #expect(pair.serverRecorder.received == bytes("early\0"))

        pair.server.writeAndFlush(ByteBuffer(bytes: bytes("5 : early\0")), promise: nil)
        try pair.shuttle()
        #expect(pair.clientRecorder.received == bytes("5 : early\0"))

        // Many writes, one flush: one ciphertext write.
        for index in 0..<10 { pair.client.write(ByteBuffer(bytes: bytes("m\(index)\0")), promise: nil) }
        pair.client.flush()
        var writes = 0
        while let bytes = try pair.client.readOutbound(as: ByteBuffer.self) {
            writes += 1
            try pair.server.writeInbound(bytes)
        }
        #expect(writes == 1)
        #expect(pair.serverRecorder.received.count == bytes("early\0").count + 30)

        // The client closes: the server's application sees its input end, as with a TCP half-close.
        pair.client.close(promise: nil)
        try pair.shuttle()
        #expect(pair.serverRecorder.inputClosed)
    }

    @Test("garbage where a TLS record should be is an error, not a crash or a hang")
    func garbage() async throws {
        let pair = try Pair(try await TestCertificates.main.value)
        try pair.shuttle()
        var garbage = ByteBuffer(bytes: [0x17, 0x03, 0x03, 0x00, 0x10])
        garbage.writeBytes([UInt8](repeating: 0xAB, count: 16))
        #expect(throws: TLSError.self) { try pair.server.writeInbound(garbage) }
        #expect(!pair.server.isActive)
    }

    @Test("a handshake record full of garbage fails the handshake: the server answers with an alert")
    func garbageHandshake() async throws {
        let pair = try Pair(try await TestCertificates.main.value)
        var garbage = ByteBuffer(bytes: [0x16, 0x03, 0x01, 0x00, 0x08])
        garbage.writeBytes([UInt8](repeating: 0xFF, count: 8))
        try pair.server.writeInbound(garbage)
        var sent: [UInt8] = []
        while let bytes = try pair.server.readOutbound(as: ByteBuffer.self) { sent += Array(bytes.readableBytesView) }
        #expect(sent.first == 0x15, "expected a TLS alert record")
        #expect(pair.serverRecorder.handshakes.isEmpty)
        #expect(pair.serverRecorder.received.isEmpty)
    }
}
