import CFuzzer
import Foundation
import LengthEchoCore
import NIOCore

// The entry point: libFuzzer's driver over this target's callback (see CFuzzer.h).
exit(
    fuzz_main(CommandLine.argc, CommandLine.unsafeArgv) { data, size in data.map { fuzzProxyProtocol($0, size) } ?? 0 })

/// The PROXY header parser on arbitrary bytes: it never traps, never takes more than it was given or more
/// than a header may be, and decides the same however the bytes are split (what a prefix says, more bytes
/// never contradict: "incomplete" stays possible only while the header could still become valid).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzProxyProtocol(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = ByteBuffer(bytes: UnsafeBufferPointer(start: data, count: size))
    let whole = Result { () throws(ProxyProtocolError) in try ProxyProtocol.parse(bytes) }
    if case .success(let parsed?) = whole {
        precondition(parsed.length <= size)
        precondition(parsed.length <= max(ProxyProtocol.maximumV1Length, ProxyProtocol.maximumV2Length))
    }
    // Every prefix is either incomplete, or says what the whole says.
    for cut in stride(from: 0, to: size, by: max(1, size / 16)) {
        let prefix = bytes.getSlice(at: bytes.readerIndex, length: cut) ?? ByteBuffer()
        switch Result(catching: { () throws(ProxyProtocolError) in try ProxyProtocol.parse(prefix) }) {
        case .success(nil):
            break
        case .success(let parsed?):
            guard case .success(let full?) = whole else { preconditionFailure("a prefix parsed, the whole did not") }
            precondition(parsed.length == full.length && parsed.header == full.header)
        case .failure(let error):
            guard case .failure(let full) = whole else { preconditionFailure("a prefix failed, the whole did not") }
            _ = (error, full)
        }
    }
    return 0
}
