import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// The write end of the self-pipe the signal handler writes to. Set once, before any handler is installed.
nonisolated(unsafe) private var signalPipeWriteEnd: Int32 = -1

/// Turns SIGINT and SIGTERM into something to await.
///
/// The handler is installed synchronously with `sigaction` and only writes the signal's number to a pipe
/// (async-signal-safe), so a signal that arrives right after start-up is never lost nor fatal; a thread
/// reads the pipe and hands each signal to whoever awaits `next()`.
final class SignalWaiter: Sendable {
    private let stream: AsyncStream<Int32>

    init(_ signals: Int32...) {
        let (stream, continuation) = AsyncStream<Int32>.makeStream()
        self.stream = stream
        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else { fatalError("cannot create the signal pipe: \(errno)") }
        signalPipeWriteEnd = fds[1]
        let readEnd = fds[0]
        for number in signals {
            var action = sigaction()
            action.__sigaction_handler.sa_handler = { number in
                var byte = UInt8(truncatingIfNeeded: number)
                _ = Glibc.write(signalPipeWriteEnd, &byte, 1)
            }
            sigemptyset(&action.sa_mask)
            action.sa_flags = SA_RESTART
            sigaction(number, &action, nil)
        }
        let thread = Thread {
            var byte: UInt8 = 0
            while true {
                let n = Glibc.read(readEnd, &byte, 1)
                if n == 1 {
                    continuation.yield(Int32(byte))
                } else if n < 0 && errno == EINTR {
                    continue
                } else {
                    return
                }
            }
        }
        thread.start()
    }

    func next() async -> Int32 {
        var iterator = self.stream.makeAsyncIterator()
        return await iterator.next() ?? SIGTERM
    }
}
