import LengthEchoCore
import NIOCore
import Testing

@testable import LengthEcho

/// The README's deadline and drain tables, rule by rule, on the connection state machine at explicit instants:
/// no socket, no clock.
@Suite("The connection's rules: deadlines, drain, backpressure, closing")
struct ConnectionStateMachineTests {
    typealias Machine = ConnectionStateMachine
    static let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000_000)

    static func at(_ seconds: Double) -> NIODeadline { t0 + .nanoseconds(Int64(seconds * 1e9)) }

    static func machine(tls: Bool = false, maximum: Int = 1024, messageTimeout: Int64 = 30) -> Machine {
        Machine(
            framing: .nul, maximumMessageLength: maximum, idleTimeout: .seconds(60),
            messageTimeout: .seconds(messageTimeout), behindTLS: tls, now: t0)
    }

    /// Feeds `text` at `seconds` and returns the messages answered.
    static func read(_ text: String, at seconds: Double, into machine: inout Machine) -> [String] {
        #expect(machine.bytesRead(ByteBuffer(string: text), now: at(seconds)) == .none)
        var answered: [String] = []
        while case .answer(let message) = machine.nextMessage() { answered.append(String(buffer: message)) }
        return answered
    }

    @Test("messages split and joined any way are answered in order; a burst's replies are flushed at its end")
    func framing() {
        var machine = Self.machine()
        #expect(Self.read("one\0tw", at: 0, into: &machine) == ["one"])
        #expect(Self.read("o\0three\0", at: 0.1, into: &machine) == ["two", "three"])
        #expect(machine.readComplete(repliesPending: true) == .flush)
        #expect(machine.readComplete(repliesPending: false) == .none)
    }

    @Test("says nothing between messages: closed at the idle timeout")
    func idle() {
        var machine = Self.machine()
        _ = Self.read("one\0", at: 5, into: &machine)
        #expect(machine.tick(now: Self.at(64.9)) == .none)
        #expect(machine.tick(now: Self.at(65)) == .closeAfterReplies(.idle))
    }

    @Test("goes silent in the middle of a message: an error line at the idle timeout after its last byte")
    func idleMidMessage() {
        var machine = Self.machine(messageTimeout: 600)
        _ = Self.read("half", at: 1, into: &machine)
        #expect(machine.tick(now: Self.at(60.9)) == .none)
        guard case .reject(.idleMidMessage, let reason, false) = machine.tick(now: Self.at(61)) else {
            Issue.record("not rejected at 61 s")
            return
        }
        #expect(reason.hasSuffix("(the message timeout)") == false && reason.contains("(the idle timeout)"))
        #expect(machine.state == .rejecting)
    }

    @Test("trickles a message however steadily: an error line at the message timeout from its first byte")
    func messageTimeout() {
        var machine = Self.machine()
        for second in 0..<30 { _ = Self.read("x", at: Double(second) + 2, into: &machine) }
        #expect(machine.tick(now: Self.at(31.9)) == .none)
        guard case .reject(.messageTimeout, let reason, _) = machine.tick(now: Self.at(32)) else {
            Issue.record("not rejected at 32 s")
            return
        }
        #expect(reason.contains("within 30 s (the message timeout)"))
    }

    @Test("a message's clock starts with its own first byte, not with the earlier message in the same read")
    func messageClock() {
        var machine = Self.machine()
        _ = Self.read("a", at: 0, into: &machine)
        _ = Self.read("\0b", at: 20, into: &machine)  // "a" answered; "b" begins at 20
        #expect(machine.messageStarted == Self.at(20))
        #expect(machine.tick(now: Self.at(49)) == .none)
    }

    @Test("stops reading its replies: reads held at once, closed without a word at the idle timeout")
    func notReading() {
        var machine = Self.machine()
        #expect(machine.readRequested(writable: true, now: Self.at(1)) == .read)
        #expect(machine.readRequested(writable: false, now: Self.at(2)) == .none)
        #expect(machine.readRequested(writable: false, now: Self.at(30)) == .none)  // the stall began at 2
        #expect(machine.tick(now: Self.at(61.9)) == .none)
        #expect(machine.tick(now: Self.at(62)) == .abort(.notReading, reason: "the peer took no replies for 60 s"))
    }

    @Test("a peer that takes its replies again is read again, and its idle time starts then")
    func resumes() {
        var machine = Self.machine()
        _ = machine.readRequested(writable: false, now: Self.at(2))
        #expect(machine.writabilityChanged(writable: true, now: Self.at(50)) == .read)
        #expect(machine.tick(now: Self.at(109)) == .none)
        #expect(machine.tick(now: Self.at(110)) == .closeAfterReplies(.idle))
    }

    @Test("does not take the last replies of a closing connection: closed at the idle timeout")
    func closing() {
        var machine = Self.machine()
        _ = Self.read("last", at: 1, into: &machine)
        let (last, then) = machine.inputClosed(now: Self.at(2))
        #expect(last.map { String(buffer: $0) } == "last")
        #expect(then == .closeAfterReplies(.clientClosed))
        #expect(machine.tick(now: Self.at(61.9)) == .none)
        #expect(machine.tick(now: Self.at(62)) == .abort(.notReading, reason: "the peer took no replies for 60 s"))
    }

    @Test("too large: rejected at once, input discarded afterwards, even while reads were held")
    func tooLarge() {
        var machine = Self.machine(maximum: 4)
        _ = machine.readRequested(writable: false, now: Self.at(0))
        #expect(machine.bytesRead(ByteBuffer(string: "12345"), now: Self.at(1)) == .none)
        guard case .reject(let action) = machine.nextMessage() else {
            Issue.record("not rejected")
            return
        }
        guard case .reject(.tooLarge, _, let resume) = action else {
            Issue.record("\(action)")
            return
        }
        #expect(resume)  // input flows again, to be discarded
        #expect(Self.read("6\0", at: 2, into: &machine) == [])
        #expect(machine.tick(now: Self.at(1000)) == .none)  // the linger timer closes it, not the sweep
        #expect(machine.inputClosed(now: Self.at(3)) == (nil, .close(nil)))
    }

    @Test("a TLS ClientHello on the plaintext port is told so; behind TLS the same bytes are a message")
    func clientHello() {
        let hello = ByteBuffer(bytes: [0x16, 0x03, 0x01, 0x00, 0x10, 0x01])
        var plain = Self.machine()
        guard case .reject(.notPlaintext, _, _) = plain.bytesRead(hello, now: Self.at(0)) else {
            Issue.record("not refused")
            return
        }
        var tls = Self.machine(tls: true)
        #expect(tls.bytesRead(hello, now: Self.at(0)) == .none)
    }

    @Test("drain: an idle connection closes at once")
    func drainIdle() {
        var machine = Self.machine()
        _ = Self.read("one\0", at: 1, into: &machine)
        #expect(machine.drain(now: Self.at(5)) == .closeAfterReplies(.drained))
    }

    @Test("drain: one accepted or answered in the last second gets the rest of that second to send its next")
    func drainGrace() {
        var machine = Self.machine()
        _ = Self.read("one\0", at: 4.5, into: &machine)
        #expect(machine.drain(now: Self.at(5)) == .none)
        #expect(machine.tick(now: Self.at(5.4)) == .none)
        #expect(Self.read("two\0", at: 5.4, into: &machine) == ["two"])
        #expect(machine.readComplete(repliesPending: true) == .closeAfterReplies(.drained))
        // Had nothing come: closed when the grace ends.
        var quiet = Self.machine()
        #expect(quiet.drain(now: Self.at(0.2)) == .none)  // accepted at 0
        #expect(quiet.tick(now: Self.at(0.9)) == .none)
        #expect(quiet.tick(now: Self.at(1)) == .closeAfterReplies(.drained))
    }

    @Test("drain: a finished TLS handshake counts as activity for the grace")
    func drainAfterHandshake() {
        var machine = Self.machine(tls: true)
        machine.handshakeCompleted(now: Self.at(9.8))
        #expect(machine.drain(now: Self.at(10)) == .none)
        #expect(machine.tick(now: Self.at(10.8)) == .closeAfterReplies(.drained))
    }

    @Test("drain: a message in progress is answered, then the connection closes, however long it took to finish")
    func drainMidMessage() {
        var machine = Self.machine()
        _ = Self.read("half a mess", at: 1, into: &machine)
        #expect(machine.drain(now: Self.at(10)) == .none)
        #expect(machine.tick(now: Self.at(20)) == .none)  // neither the grace nor the drain closes it
        #expect(Self.read("age\0", at: 25, into: &machine) == ["half a message"])
        #expect(machine.readComplete(repliesPending: true) == .closeAfterReplies(.drained))
    }

    @Test("drain timeout: whatever is still open closes, once")
    func drainTimeout() {
        var machine = Self.machine()
        _ = Self.read("half", at: 1, into: &machine)
        _ = machine.drain(now: Self.at(2))
        #expect(machine.drainTimedOut() == .close(.drainTimeout))
        #expect(machine.drainTimedOut() == .none)
    }

    @Test("a half-close: what is left unterminated is the last message; a rejected connection just closes")
    func halfClose() {
        var machine = Self.machine()
        _ = Self.read("hello", at: 1, into: &machine)
        let (last, then) = machine.inputClosed(now: Self.at(2))
        #expect(last.map { String(buffer: $0) } == "hello")
        #expect(then == .closeAfterReplies(.clientClosed))
        var empty = Self.machine()
        #expect(empty.inputClosed(now: Self.at(1)) == (nil, .closeAfterReplies(.clientClosed)))
        var large = Self.machine(maximum: 2)
        _ = Self.read("abc", at: 1, into: &large)  // over the limit, no terminator yet: rejected on the read
        #expect(large.state == .rejecting)
    }
}
