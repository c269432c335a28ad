/// Makes untrusted bytes safe to print on one terminal line: a message must not forge log lines or send
/// escape sequences to the operator's terminal.
package enum Escaping {
    private static let hex: [UInt8] = Array("0123456789abcdef".utf8)

    /// Appends `bytes` to `out` with C0 and C1 control characters, DEL, backslash and invalid UTF-8
    /// escaped (`\n`, `\t`, `\x1b`, `\u{9b}`, `\xff`, `\\`). Valid UTF-8 text such as `안녕` passes through.
    package static func appendPrintable<Bytes: RandomAccessCollection<UInt8>>(
        _ bytes: Bytes,
        to out: inout [UInt8]
    ) where Bytes.Index == Int {
        var index = bytes.startIndex
        while index < bytes.endIndex {
            let lead = bytes[index]
            if lead < 0x80 {
                appendASCII(lead, to: &out)
                index += 1
                continue
            }
            let length = validSequenceLength(bytes, at: index)
            guard length > 0 else {
                appendHex(lead, to: &out)
                index += 1
                continue
            }
            // U+0080...U+009F (C1 controls, among them CSI) are two bytes: C2 80...C2 9F.
            if lead == 0xC2, bytes[index + 1] < 0xA0 {
                out.append(contentsOf: Array("\\u{".utf8))
                appendHexDigits(bytes[index + 1] & 0xBF, to: &out)
                out.append(UInt8(ascii: "}"))
            } else {
                out.append(contentsOf: bytes[index..<(index + length)])
            }
            index += length
        }
    }

    /// The printable rendering of `bytes` as a `String`.
    package static func printable<Bytes: RandomAccessCollection<UInt8>>(_ bytes: Bytes) -> String
    where Bytes.Index == Int {
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count)
        appendPrintable(bytes, to: &out)
        return String(decoding: out, as: UTF8.self)
    }

    /// The length of the well-formed UTF-8 sequence (RFC 3629) starting at `index`, or 0 if there is none.
    private static func validSequenceLength<Bytes: RandomAccessCollection<UInt8>>(
        _ bytes: Bytes,
        at index: Int
    ) -> Int where Bytes.Index == Int {
        let lead = bytes[index]
        let length: Int
        var secondRange: ClosedRange<UInt8> = 0x80...0xBF
        switch lead {
        case 0xC2...0xDF: length = 2
        case 0xE0: length = 3; secondRange = 0xA0...0xBF
        case 0xE1...0xEC, 0xEE...0xEF: length = 3
        case 0xED: length = 3; secondRange = 0x80...0x9F
        case 0xF0: length = 4; secondRange = 0x90...0xBF
        case 0xF1...0xF3: length = 4
        case 0xF4: length = 4; secondRange = 0x80...0x8F
        default: return 0
        }
        guard bytes.endIndex - index >= length, secondRange.contains(bytes[index + 1]) else { return 0 }
        for offset in 2..<length where !(0x80...0xBF).contains(bytes[index + offset]) {
            return 0
        }
        return length
    }

    private static func appendASCII(_ byte: UInt8, to out: inout [UInt8]) {
        switch byte {
        case UInt8(ascii: "\\"): out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "\\")])
        case UInt8(ascii: "\n"): out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "n")])
        case UInt8(ascii: "\r"): out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "r")])
        case UInt8(ascii: "\t"): out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "t")])
        case 0..<0x20, 0x7F: appendHex(byte, to: &out)
        default: out.append(byte)
        }
    }

    private static func appendHex(_ byte: UInt8, to out: inout [UInt8]) {
        out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "x")])
        appendHexDigits(byte, to: &out)
    }

    private static func appendHexDigits(_ byte: UInt8, to out: inout [UInt8]) {
        out.append(hex[Int(byte >> 4)])
        out.append(hex[Int(byte & 0xF)])
    }
}
