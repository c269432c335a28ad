import CFuzzer
import Foundation
import LengthEchoCore
import NIOCore

// The entry point: libFuzzer's driver over this target's callback (see CFuzzer.h).
exit(fuzz_main(CommandLine.argc, CommandLine.unsafeArgv) { data, size in data.map { fuzzFramer($0, size) } ?? 0 })

/// The framer against a reference: the input, split by the terminator, is what comes out, however the
/// bytes are cut into reads; a message over the limit is refused exactly where the reference says.
///
/// Input: byte 0 picks the framing (bit 0) and the limit (the rest); byte 1 seeds the read sizes; the
/// remaining bytes are the stream.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzFramer(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size >= 2 else { return 0 }
    let input = Array(UnsafeBufferPointer(start: data, count: size))
    let framing: Framing = input[0] & 1 == 0 ? .nul : .line
    let limit = Int(input[0] >> 1)  // 0...127
    var seed = UInt32(input[1]) | 1
    let stream = Array(input[2...])

    // The reference: segments between terminators, `\r` before a newline stripped in line mode.
    var expected: [[UInt8]] = []
    var overlongAt: Int? = nil
    var segment: [UInt8] = []
    for byte in stream {
        if byte == framing.terminator {
            if framing == .line, segment.last == 0x0D { segment.removeLast() }
            if segment.count > limit, overlongAt == nil { overlongAt = expected.count }
            expected.append(segment)
            segment = []
        } else {
            segment.append(byte)
        }
    }
    let tailAllowed = segment.count <= limit || (framing == .line && segment.count == limit + 1 && segment.last == 0x0D)
    if !tailAllowed, overlongAt == nil { overlongAt = expected.count }

    var framer = MessageFramer(framing: framing, maximumMessageLength: limit)
    var got: [[UInt8]] = []
    var failedAt: Int? = nil
    var offset = 0
    reading: while offset < stream.count {
        seed = seed &* 1_103_515_245 &+ 12_345
        let length = min(stream.count - offset, Int(seed >> 16) % 9 + 1)
        framer.append(ByteBuffer(bytes: stream[offset..<(offset + length)]))
        offset += length
        while true {
            do {
                guard let message = try framer.next() else { break }
                got.append(Array(message.readableBytesView))
            } catch {
                failedAt = got.count
                break reading
            }
        }
    }
    if let failedAt {
        precondition(
            overlongAt == failedAt,
            "refused at message \(failedAt), the reference says \(String(describing: overlongAt))")
        precondition(got == Array(expected.prefix(failedAt)), "messages before the refusal differ")
    } else {
        precondition(overlongAt == nil, "an overlong message at \(overlongAt!) was not refused")
        precondition(got == expected, "messages differ from the reference")
        precondition(framer.bufferedBytes == segment.count, "the unterminated tail was not kept")
    }
    return 0
}
