import LengthEchoCore
import LengthEchoTestSupport
import NIOCore
import NIOEmbedded
import Testing

@testable import LengthEchoTLS

/// The TLS handler's deadlines and endings: a stalled handshake, close_notify, output closed, a refused peer.
extension TLSHandlerTests {
    @Test("a peer that never finishes the handshake is dropped when the handshake timeout passes")
    func handshakeTimeout() async throws {
        let handshake = EmbeddedEventLoop().makePromise(of: TLSConnectionInfo.self)
        let pair = try Pair(
            try await TestCertificates.main.value, handshakeTimeout: .seconds(5), clientHandshake: handshake)
        defer { pair.finish() }
        _ = try pair.drain(pair.client)  // the ClientHello, never delivered
        pair.server.embeddedEventLoop.advanceTime(by: .milliseconds(4_900))
        #expect(pair.server.isActive)
        pair.server.embeddedEventLoop.advanceTime(by: .milliseconds(200))
        #expect(!pair.server.isActive)
        pair.client.embeddedEventLoop.advanceTime(by: .seconds(5))
        #expect(!pair.client.isActive)
        _ = handshake
    }

    @Test("closing waits for the peer's close_notify, bounded by the shutdown timeout")
    func closeNotifyWait() async throws {
        let pair = try Pair(try await TestCertificates.main.value, shutdownTimeout: .seconds(3))
        defer { pair.finish() }
        try pair.shuttle()
        let closed = pair.client.eventLoop.makePromise(of: Void.self)
        pair.client.close(promise: closed)
        let sent = try pair.drain(pair.client)
        #expect(sent.bytes.first == 0x17 || sent.bytes.first == 0x15, "close_notify is sent at once")
        pair.client.embeddedEventLoop.advanceTime(by: .milliseconds(2_900))
        #expect(pair.client.isActive, "the peer still has time to answer")
        #expect(pair.clientHalfClose.outputClosed, "the peer sees our EOF while we wait")
        pair.client.embeddedEventLoop.advanceTime(by: .milliseconds(200))
        #expect(!pair.client.isActive)
        try settled(closed.futureResult)
    }

    @Test("closing when the peer has already sent close_notify closes at once")
    func closeAfterPeerCloseNotify() async throws {
        let pair = try Pair(try await TestCertificates.main.value)
        defer { pair.finish() }
        try pair.shuttle()
        pair.client.close(mode: .output, promise: nil)
        try pair.shuttle()
        #expect(pair.serverRecorder.inputClosed)
        pair.server.close(promise: nil)
        #expect(!pair.server.isActive, "no wait: the peer's close_notify is already here")
    }

    @Test("output closed: writes fail, reads go on, and the peer sees the end of our data")
    func outputClosed() async throws {
        let pair = try Pair(try await TestCertificates.main.value)
        defer { pair.finish() }
        try pair.shuttle()
        pair.client.writeAndFlush(ByteBuffer(string: "last\0"), promise: nil)
        pair.client.close(mode: .output, promise: nil)
        try pair.shuttle()
        #expect(pair.serverRecorder.received == bytes("last\0"))
        #expect(pair.serverRecorder.inputClosed)
        #expect(pair.clientHalfClose.outputClosed)
        let refused = pair.client.eventLoop.makePromise(of: Void.self)
        pair.client.writeAndFlush(ByteBuffer(string: "more\0"), promise: refused)
        #expect(throws: ChannelError.outputClosed) { try settled(refused.futureResult) }
        pair.server.writeAndFlush(ByteBuffer(string: "4 : last\0"), promise: nil)
        try pair.shuttle()
        #expect(pair.clientRecorder.received == bytes("4 : last\0"))
        #expect(pair.client.isActive)
    }

    @Test("a plaintext client gets the refusal it was given, then the connection lingers and closes")
    func plaintextRefusalLingers() async throws {
        let pair = try Pair(try await TestCertificates.main.value)
        defer { pair.finish() }
        try pair.server.writeInbound(ByteBuffer(string: "hello\0"))
        #expect(try pair.drain(pair.server).bytes == bytes("error: TLS only\0"))
        #expect(pair.server.isActive)
        #expect(pair.serverHalfClose.outputClosed)
        // More input is discarded while it lingers.
        try pair.server.writeInbound(ByteBuffer(string: "still talking\0"))
        #expect(pair.serverRecorder.received.isEmpty)
        pair.server.embeddedEventLoop.advanceTime(by: .milliseconds(1_900))
        #expect(pair.server.isActive)
        pair.server.embeddedEventLoop.advanceTime(by: .milliseconds(200))
        #expect(!pair.server.isActive)
    }
}

func settled<T: Sendable>(_ future: EventLoopFuture<T>) throws -> T {
    try future.wait()
}

/// The order in which callbacks ran.
final class Order {
    var entries: [String] = []

    /// Appends `name` when `future` succeeds (callbacks of an EmbeddedEventLoop run on the test's thread).
    func record(_ name: String, when future: EventLoopFuture<Void>) {
        future.assumeIsolated().whenSuccess { self.entries.append(name) }
    }
}
