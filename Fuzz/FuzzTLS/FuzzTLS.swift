import CFuzzer
import Foundation
import LengthEchoCore
import LengthEchoTLS
import NIOCore
import NIOEmbedded

// The entry point: libFuzzer's driver over this target's callback (see CFuzzer.h).
exit(fuzz_main(CommandLine.argc, CommandLine.unsafeArgv) { data, size in data.map { fuzzTLS($0, size) } ?? 0 })

/// The TLS handler, in either role, fed arbitrary bytes as what the peer sent, in arbitrary pieces: it
/// never traps, never leaks a promise, and ends closed or still waiting, never in between.
///
/// Input: byte 0 picks the role (bit 0) and seeds the read sizes; the rest is the peer's bytes. Certificates
/// are made once, with the openssl command, in a temporary folder.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTLS(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size >= 1, let contexts = Contexts.shared else { return 0 }
    let input = Array(UnsafeBufferPointer(start: data, count: size))
    let isServer = input[0] & 1 == 0
    var seed = UInt32(input[0]) | 1
    let channel = EmbeddedChannel()
    do {
        let handler =
            isServer
            ? try TLSHandler(context: contexts.server, plaintextRefusal: ByteBuffer(string: "error: TLS only\0"))
            : try TLSHandler(context: contexts.client, expectedHost: "localhost")
        try channel.pipeline.syncOperations.addHandler(handler)
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
    } catch {
        return 0
    }
    channel.write(ByteBuffer(string: "a message\0"), promise: nil)
    channel.flush()
    var offset = 1
    while offset < input.count, channel.isActive {
        seed = seed &* 1_103_515_245 &+ 12_345
        let length = min(input.count - offset, Int(seed >> 16) % 600 + 1)
        _ = try? channel.writeInbound(ByteBuffer(bytes: input[offset..<(offset + length)]))
        offset += length
        while (try? channel.readOutbound(as: ByteBuffer.self)) ?? nil != nil {}
    }
    // However it ended, it closes within the handler's own deadlines.
    channel.close(promise: nil)
    channel.embeddedEventLoop.advanceTime(by: .minutes(1))
    _ = try? channel.finish(acceptAlreadyClosed: true)
    channel.embeddedEventLoop.run()
    return 0
}

/// A server and a client context, from certificates made once per process.
final class Contexts: Sendable {
    let server: TLSContext
    let client: TLSContext

    static let shared: Contexts? = {
        let directory = NSTemporaryDirectory() + "length-echo-fuzz-\(getpid())"
        try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let key = directory + "/key.pem"
        let cert = directory + "/cert.pem"
        // system(), not Foundation's Process, which leaks a weak reference that LeakSanitizer reports.
        let command =
            "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout \(key) -out \(cert) "
            + "-days 2 -subj /CN=localhost -addext subjectAltName=DNS:localhost 2>/dev/null"
        guard system(command) == 0 else { return nil }
        guard let server = try? TLSContext.server(certificateChain: cert, privateKey: key),
            let client = try? TLSContext.client(trustRoots: .file(cert))
        else { return nil }
        return Contexts(server: server, client: client)
    }()

    init(server: TLSContext, client: TLSContext) {
        self.server = server
        self.client = client
    }
}
