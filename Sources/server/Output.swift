import Foundation
import LengthEchoCore
import Logging
import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// Lines written by a thread of their own, so a slow or paused terminal or pipe never stalls an event loop.
///
/// Callers append to a shared buffer under a lock (no allocation per line once it has grown); the writer
/// thread writes it out. Lines are batched: the first line after a quiet spell wakes the writer, which
/// gathers for up to `batchWindow` before one `write`, so a busy server pays one wake-up and one syscall per
/// batch, not per line. Past 4 MiB of unwritten lines new ones are dropped, and how many is said.
final class LineWriter: @unchecked Sendable {
    private let condition = NSCondition()
    private var pending: [UInt8] = []
    private var dropped = 0
    private var writing = false
    private var flushing = false
    private let fd: Int32
    private let droppedNote: String
    private static let limit = 4 << 20
    /// How long a line may wait for others to share its write.
    static let batchWindow = 0.02

    init(fd: Int32, droppedNote: String) {
        self.fd = fd
        self.droppedNote = droppedNote
        self.pending.reserveCapacity(64 * 1024)
        Thread { [self] in self.run() }.start()
    }

    /// Appends one line: `body` writes its bytes (without the newline) into the shared buffer.
    func line(_ body: (inout [UInt8]) -> Void) {
        self.condition.lock()
        defer { self.condition.unlock() }
        guard self.pending.count < Self.limit else {
            self.dropped += 1
            return
        }
        let wasEmpty = self.pending.isEmpty
        body(&self.pending)
        self.pending.append(UInt8(ascii: "\n"))
        if wasEmpty { self.condition.broadcast() }  // the writer sleeps only while nothing is pending
    }

    /// Waits until every line so far is written (before the process exits).
    func flush() {
        self.condition.lock()
        self.flushing = true
        self.condition.broadcast()
        while !self.pending.isEmpty || self.writing {
            self.condition.wait()
        }
        self.flushing = false
        self.condition.unlock()
    }

    private func run() {
        var out: [UInt8] = []
        out.reserveCapacity(64 * 1024)
        while true {
            self.condition.lock()
            while self.pending.isEmpty && self.dropped == 0 {
                self.condition.wait()
            }
            // Gather: more lines may share this write (a flush, or a full batch, cuts the wait short).
            let deadline = Date(timeIntervalSinceNow: Self.batchWindow)
            while !self.flushing && self.pending.count < 64 * 1024 && self.condition.wait(until: deadline) {}
            swap(&out, &self.pending)
            let dropped = self.dropped
            self.dropped = 0
            self.writing = true
            self.condition.unlock()

            Standard.write(out, to: self.fd)
            if dropped > 0 {
                Standard.write(
                    Array("\(self.droppedNote.replacingOccurrences(of: "N", with: "\(dropped)"))\n".utf8), to: self.fd)
            }
            out.removeAll(keepingCapacity: true)

            self.condition.lock()
            self.writing = false
            self.condition.broadcast()
            self.condition.unlock()
        }
    }
}

/// The original's `receive: <message>` lines on stdout, control bytes escaped.
final class ReceiveLog: Sendable {
    private let writer = LineWriter(fd: 1, droppedNote: "receive: (N lines not shown: stdout is not keeping up)")
    private static let prefix = Array("receive: ".utf8)

    func print(_ message: ByteBuffer) {
        self.writer.line { out in
            out.append(contentsOf: Self.prefix)
            message.withUnsafeReadableBytes { bytes in
                Escaping.appendPrintable(bytes.bindMemory(to: UInt8.self), to: &out)
            }
        }
    }

    func flush() { self.writer.flush() }
}

enum Standard {
    static func error(_ text: String) {
        Self.write(Array((text + "\n").utf8), to: 2)
    }

    static func write(_ bytes: [UInt8], to fd: Int32) {
        bytes.withUnsafeBytes { raw in
            guard let base = raw.baseAddress else { return }
            var offset = 0
            while offset < raw.count {
                let n = Glibc.write(fd, base + offset, raw.count - offset)
                if n <= 0 {
                    if n < 0 && errno == EINTR { continue }
                    return
                }
                offset += n
            }
        }
    }
}
