// The length-echo protocol on SwiftNIO and swift-nio-ssl: a message ends with one NUL byte; the reply is its
// length in ASCII decimal, " : ", the message and one NUL.
//
// usage: nio-ssl-peer PORT [CERT KEY] [THREADS]
//   With CERT and KEY (PEM files) it speaks TLS 1.2 and 1.3 through NIOSSLServerHandler; without, plaintext.
//   Listens on 127.0.0.1 only; THREADS event loops (default: one per core).
import Glibc
import NIOCore
import NIOPosix
import NIOSSL

/// Splits the stream into NUL-terminated messages (the NUL not included).
struct NULFrameDecoder: ByteToMessageDecoder {
    typealias InboundOut = ByteBuffer

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let end = buffer.readableBytesView.firstIndex(of: 0) else { return .needMoreData }
        let length = end - buffer.readerIndex
        guard let message = buffer.readSlice(length: length) else { return .needMoreData }
        buffer.moveReaderIndex(forwardBy: 1)
        context.fireChannelRead(Self.wrapInboundOut(message))
        return .continue
    }
}

/// Answers each message with "LENGTH : MESSAGE\0"; flushes once per read burst.
final class LengthEchoHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let message = Self.unwrapInboundIn(data)
        let prefix = "\(message.readableBytes) : "
        var reply = context.channel.allocator.buffer(capacity: prefix.utf8.count + message.readableBytes + 1)
        reply.writeString(prefix)
        reply.writeImmutableBuffer(message)
        reply.writeInteger(UInt8(0))
        context.write(Self.wrapOutboundOut(reply), promise: nil)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        context.flush()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

let arguments = CommandLine.arguments
guard arguments.count == 2 || arguments.count == 3 || arguments.count == 4 || arguments.count == 5,
    let port = Int(arguments[1])
else {
    print("usage: nio-ssl-peer PORT [CERT KEY] [THREADS]")
    exit(2)
}
let hasTLS = arguments.count >= 4
let threadsArgument = arguments.count == 3 || arguments.count == 5 ? Int(arguments.last ?? "") : nil
let threads = threadsArgument ?? System.coreCount

let sslContext: NIOSSLContext?
if hasTLS {
    var configuration = TLSConfiguration.makeServerConfiguration(
        certificateChain: try NIOSSLCertificate.fromPEMFile(arguments[2]).map { .certificate($0) },
        privateKey: .privateKey(try NIOSSLPrivateKey(file: arguments[3], format: .pem))
    )
    configuration.minimumTLSVersion = .tlsv12
    sslContext = try NIOSSLContext(configuration: configuration)
} else {
    sslContext = nil
}

let group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
let channel = try await ServerBootstrap(group: group)
    .serverChannelOption(.backlog, value: 4096)
    .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
    .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
    .childChannelInitializer { channel in
        channel.eventLoop.makeCompletedFuture {
            if let sslContext {
                try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: sslContext))
            }
            try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(NULFrameDecoder()))
            try channel.pipeline.syncOperations.addHandler(LengthEchoHandler())
        }
    }
    .bind(host: "127.0.0.1", port: port)
    .get()
print("nio-ssl-peer listening on 127.0.0.1:\(port)\(hasTLS ? " (TLS)" : "")")
try await channel.closeFuture.get()
