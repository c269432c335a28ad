import LengthEchoCore
import LengthEchoTestSupport
import NIOCore
import NIOEmbedded
import Testing

@testable import LengthEchoTLS

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

    /// Below the TLS handler: does what a TCP socket does with `close(mode: .output)` (shut the write side,
    /// keep reading), which an EmbeddedChannel cannot do on its own (it closes altogether).
    final class HalfClose: ChannelOutboundHandler {
        typealias OutboundIn = ByteBuffer
        var outputClosed = false
        func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
            if mode == .output {
                self.outputClosed = true
                promise?.succeed()
            } else {
                context.close(mode: mode, promise: promise)
            }
        }
    }

    /// Below the TLS handler: a socket slow to send. Writes wait, in order, until `release`.
    final class HeldWrites: ChannelOutboundHandler {
        typealias OutboundIn = ByteBuffer
        private var held: [(NIOAny, EventLoopPromise<Void>?)] = []
        private var context: ChannelHandlerContext?
        func handlerAdded(context: ChannelHandlerContext) { self.context = context }
        func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }
        func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
            if self.context == nil {
                context.write(data, promise: promise)  // released: a socket that caught up
            } else {
                self.held.append((data, promise))
            }
        }
        func flush(context: ChannelHandlerContext) {
            if self.context == nil { context.flush() }
        }
        /// Sends what was held, in order, and from then on holds nothing.
        func release() {
            guard let context = self.context else { return }
            self.context = nil
            for (data, promise) in self.held { context.write(data, promise: promise) }
            self.held = []
            context.flush()
        }
    }

    /// Above the server's TLS handler: answers every read with "ok\0", flushed at the end of the read burst,
    /// as the server's protocol handler does.
    final class Replier: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        typealias InboundOut = ByteBuffer
        typealias OutboundOut = ByteBuffer
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            context.write(self.wrapOutboundOut(ByteBuffer(string: "ok\0")), promise: nil)
            context.fireChannelRead(data)
        }
        func channelReadComplete(context: ChannelHandlerContext) {
            context.flush()
            context.fireChannelReadComplete()
        }
    }

    struct Pair {
        let client: EmbeddedChannel
        let server: EmbeddedChannel
        let clientRecorder = Recorder()
        let serverRecorder = Recorder()
        let clientHalfClose = HalfClose()
        let serverHalfClose = HalfClose()

        init(
            _ certificates: TestCertificates,
            handshakeTimeout: TimeAmount = .seconds(10),
            shutdownTimeout: TimeAmount = .seconds(3),
            clientHandshake: EventLoopPromise<TLSConnectionInfo>? = nil,
            loop: EmbeddedEventLoop? = nil,
            serverReplies: Bool = false
        ) throws {
            self.client = EmbeddedChannel(loop: loop ?? EmbeddedEventLoop())
            self.server = EmbeddedChannel(loop: loop ?? EmbeddedEventLoop())
            try self.server.pipeline.syncOperations.addHandlers([
                self.serverHalfClose,
                TLSHandler(
                    context: try certificates.serverContext(),
                    handshakeTimeout: handshakeTimeout,
                    shutdownTimeout: shutdownTimeout,
                    plaintextRefusal: ByteBuffer(string: "error: TLS only\0")
                ),
            ])
            if serverReplies { try self.server.pipeline.syncOperations.addHandler(Replier()) }
            try self.server.pipeline.syncOperations.addHandler(self.serverRecorder)
            try self.client.pipeline.syncOperations.addHandlers([
                self.clientHalfClose,
                TLSHandler(
                    context: try certificates.clientContext(),
                    expectedHost: "localhost",
                    handshakeTimeout: handshakeTimeout,
                    shutdownTimeout: shutdownTimeout,
                    handshakeCompleted: clientHandshake
                ),
                self.clientRecorder,
            ])
            let address = try SocketAddress(ipAddress: "127.0.0.1", port: 1)
            try self.server.connect(to: address).wait()
            try self.client.connect(to: address).wait()
        }

        /// Closes both channels (if still open) and lets their loops run what is left, so nothing they hold
        /// outlives the test: the leak checker sees every channel, handler and SSL freed.
        func finish() {
            for channel in [self.client, self.server] {
                // A TLS close waits (on virtual time) for the peer's close_notify: let that time pass first.
                channel.close(promise: nil)
                channel.embeddedEventLoop.advanceTime(by: .minutes(1))
                _ = try? channel.finish(acceptAlreadyClosed: true)
                channel.embeddedEventLoop.run()
            }
        }

        /// Everything `channel` has written so far, as one array, and how many writes it took.
        func drain(_ channel: EmbeddedChannel) throws -> (bytes: [UInt8], writes: Int) {
            var bytes: [UInt8] = []
            var writes = 0
            while let buffer = try channel.readOutbound(as: ByteBuffer.self) {
                bytes += Array(buffer.readableBytesView)
                writes += 1
            }
            return (bytes, writes)
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

    /// Everything `channel` has written so far, in one buffer.
    private func joined(_ channel: EmbeddedChannel) throws -> ByteBuffer {
        var all = ByteBuffer()
        while var bytes = try channel.readOutbound(as: ByteBuffer.self) { all.writeBuffer(&bytes) }
        return all
    }

    @Test(
        "a TLS record cut anywhere across reads is read whole and in order",
        arguments: [1, 5, 6, 1000, 16_389, 40_000])
    func recordsCutAcrossReads(chunk: Int) async throws {
        let pair = try Pair(try await TestCertificates.main.value)
        defer { pair.finish() }
        try pair.shuttle()
        // 100 KiB in one write: seven records, the reads cutting them (and their 5-byte headers) anywhere.
        let message = (0..<100_000).map { UInt8(truncatingIfNeeded: $0 % 251 + 1) } + [0]
        pair.client.writeAndFlush(ByteBuffer(bytes: message), promise: nil)
        var ciphertext = try self.joined(pair.client)
        var reads = 0
        while let piece = ciphertext.readSlice(length: min(chunk, ciphertext.readableBytes)), piece.readableBytes > 0 {
            try pair.server.writeInbound(piece)
            reads += 1
        }
        #expect(reads == (100_001 + 7 * 22 + chunk - 1) / chunk)
        #expect(pair.serverRecorder.received == message)
    }

    @Test("the server's ticket leaves in one write with the replies to what came with the client's Finished")
    func ticketWithReplies() async throws {
        let pair = try Pair(try await TestCertificates.main.value, serverReplies: true)
        defer { pair.finish() }
        pair.client.writeAndFlush(ByteBuffer(string: "early\0"), promise: nil)  // waits for the handshake
        try pair.server.writeInbound(try self.joined(pair.client))  // ClientHello
        let flight = try pair.drain(pair.server)
        #expect(flight.writes == 1, "ServerHello to Finished in one write")
        try pair.client.writeInbound(ByteBuffer(bytes: flight.bytes))
        // The client's Finished and its message arrive in one read: the ticket and the reply leave in one write.
        try pair.server.writeInbound(try self.joined(pair.client))
        #expect(pair.serverRecorder.handshakes.count == 1)
        #expect(pair.serverRecorder.received == bytes("early\0"))
        let answer = try pair.drain(pair.server)
        #expect(answer.writes == 1)
        try pair.client.writeInbound(ByteBuffer(bytes: answer.bytes))
        #expect(pair.clientRecorder.received == bytes("ok\0"))
    }

    @Test("handshake, writes queued before it, data both ways, close_notify as a half-close")
    func lifecycle() async throws {
        let pair = try Pair(try await TestCertificates.main.value)
        defer { pair.finish() }
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
        defer { pair.finish() }
        try pair.shuttle()
        var garbage = ByteBuffer(bytes: [0x17, 0x03, 0x03, 0x00, 0x10])
        garbage.writeBytes([UInt8](repeating: 0xAB, count: 16))
        #expect(throws: TLSError.self) { try pair.server.writeInbound(garbage) }
        #expect(!pair.server.isActive)
    }

    @Test("a handshake record full of garbage fails the handshake: the server answers with an alert")
    func garbageHandshake() async throws {
        let pair = try Pair(try await TestCertificates.main.value)
        defer { pair.finish() }
        var garbage = ByteBuffer(bytes: [0x16, 0x03, 0x01, 0x00, 0x08])
        garbage.writeBytes([UInt8](repeating: 0xFF, count: 8))
        try pair.server.writeInbound(garbage)
        var sent: [UInt8] = []
        while let bytes = try pair.server.readOutbound(as: ByteBuffer.self) { sent += Array(bytes.readableBytesView) }
        #expect(sent.first == 0x15, "expected a TLS alert record")
        #expect(pair.serverRecorder.handshakes.isEmpty)
        #expect(pair.serverRecorder.received.isEmpty)
    }

    // MARK: NIO's write/flush contract

    @Test("a write that was never flushed never leaves, not even when a read makes the handler send")
    func unflushedStaysPut() async throws {
        let pair = try Pair(try await TestCertificates.main.value)
        defer { pair.finish() }
        try pair.shuttle()
        pair.client.write(ByteBuffer(string: "unflushed\0"), promise: nil)
        #expect(try pair.drain(pair.client).writes == 0)
        // A read on the client (the server's reply) makes the handler consider sending; the write stays put.
        pair.server.writeAndFlush(ByteBuffer(string: "hi\0"), promise: nil)
        for bytes in try [pair.server.readOutbound(as: ByteBuffer.self)].compactMap({ $0 }) {
            try pair.client.writeInbound(bytes)
        }
        #expect(pair.clientRecorder.received == bytes("hi\0"))
        let afterRead = try pair.drain(pair.client)
        try pair.server.writeInbound(ByteBuffer(bytes: afterRead.bytes))
        #expect(pair.serverRecorder.received.isEmpty, "an unflushed write reached the peer")
        // The flush sends it, in one write.
        pair.client.flush()
        let flushed = try pair.drain(pair.client)
        #expect(flushed.writes == 1)
        try pair.server.writeInbound(ByteBuffer(bytes: flushed.bytes))
        #expect(pair.serverRecorder.received == bytes("unflushed\0"))
    }

    @Test("during the handshake a flush is remembered: flushed writes go when it completes, unflushed ones wait")
    func flushDuringHandshake() async throws {
        let pair = try Pair(try await TestCertificates.main.value)
        defer { pair.finish() }
        let flushedWrite = pair.client.eventLoop.makePromise(of: Void.self)
        pair.client.write(ByteBuffer(string: "flushed\0"), promise: flushedWrite)
        pair.client.flush()
        let laterWrite = pair.client.eventLoop.makePromise(of: Void.self)
        pair.client.write(ByteBuffer(string: "later\0"), promise: laterWrite)
        try pair.shuttle()
        #expect(pair.serverRecorder.handshakes.count == 1)
        #expect(pair.serverRecorder.received == bytes("flushed\0"))
        try settled(flushedWrite.futureResult)
        pair.client.flush()
        try pair.shuttle()
        #expect(pair.serverRecorder.received == bytes("flushed\0later\0"))
        try settled(laterWrite.futureResult)
    }

    @Test("an empty write's promise completes in order with the ciphertext writes around it")
    func emptyWriteKeepsOrder() async throws {
        let pair = try Pair(try await TestCertificates.main.value)
        defer { pair.finish() }
        try pair.shuttle()
        // A socket that has not yet sent what it was given: writes wait below the TLS handler.
        let socket = HeldWrites()
        try pair.client.pipeline.syncOperations.addHandler(socket, position: .first)
        let order = Order()
        let data = pair.client.eventLoop.makePromise(of: Void.self)
        let empty = pair.client.eventLoop.makePromise(of: Void.self)
        order.record("data", when: data.futureResult)
        order.record("empty", when: empty.futureResult)
        pair.client.writeAndFlush(ByteBuffer(string: "x\0"), promise: data)
        pair.client.writeAndFlush(ByteBuffer(), promise: empty)
        #expect(order.entries.isEmpty, "the empty write completed while earlier ciphertext was still unsent")
        socket.release()
        try pair.shuttle()
        try settled(empty.futureResult)
        #expect(order.entries == ["data", "empty"])
    }

    // MARK: timers, on virtual time
}
