import CFuzzer
import Foundation
import LengthEchoCore
import NIOCore

// The entry point: libFuzzer's driver over this target's callback (see CFuzzer.h).
exit(fuzz_main(CommandLine.argc, CommandLine.unsafeArgv) { data, size in data.map { fuzzReplyParser($0, size) } ?? 0 })

/// The reply parser on arbitrary bytes: it never traps, and whatever it accepts as an echo is exactly what
/// the encoder would have written for that message.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzReplyParser(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    guard let reply = try? ParsedReply(bytes: bytes) else { return 0 }
    switch reply {
    case .echo(let length, let message):
        precondition(length == message.count)
        var encoded = ByteBuffer()
        Reply.write(echoOf: ByteBuffer(bytes: message), framing: .nul, into: &encoded)
        let withoutTerminator = Array(encoded.readableBytesView.dropLast())
        // Leading zeros in the length are the one thing the encoder would not write.
        let leadingZero = bytes.count > 1 && bytes[0] == UInt8(ascii: "0") && (0x30...0x39).contains(bytes[1])
        if !leadingZero {
            precondition(withoutTerminator == bytes, "accepted a reply the encoder would not write")
        }
    case .error(let reason):
        _ = reason
    }
    return 0
}
