import LengthEchoCore
import NIOCore

/// One server connection's protocol rules, as a value: framing, every deadline, backpressure, drain, and when to
/// close, reject or abort. It is told what happened and when (it reads no clock and touches no channel) and
/// answers with what to do; `LengthEchoServerHandler` carries that out.
///
/// Deadlines, each checked by `tick(now:)` (the loop's sweep, at most a second late):
/// - silence between messages: the idle timeout, then closed (`idle`);
/// - a message that takes too long however steadily it trickles: the message timeout, then an error line
///   (`message-timeout`);
/// - silence in the middle of a message: the idle timeout, then an error line (`idle-mid-message`);
/// - a peer that stops taking its replies (reads are held meanwhile): the idle timeout, then closed without a
///   word (`not-reading`);
/// - the last replies of a closing connection: the idle timeout, then closed (`not-reading`).
///
/// Drain: an idle connection closes at once; one in the middle of a message has it answered, then closes; one
/// accepted or answered within `drainGrace` gets that long to send its next message, which is answered, then it
/// closes.
struct ConnectionStateMachine {
    enum State: Equatable {
        /// Reading messages and answering them.
        case serving
        /// The last replies are being written (since then); the connection closes once they are out.
        case closing(since: NIODeadline)
        /// An error reply was sent and the write side shut; input is discarded until the close.
        case rejecting
        /// Closed, or closing with nothing more to write: nothing more happens.
        case closed
    }

    /// What the handler does.
    enum Action: Equatable {
        case none
        /// Ask the channel for more bytes (reads were held while the peer took no replies).
        case read
        /// Write the replies gathered so far, and flush.
        case flush
        /// Write the replies left, close once they are on the wire; the connection ended for this reason.
        case closeAfterReplies(ConnectionEnd)
        /// Answer `error: <reason>`, shut the write side, discard input for the linger time, then close.
        /// `resumeReading`: reads were held (the peer took no replies); input flows again, to be discarded.
        case reject(ConnectionEnd, reason: String, resumeReading: Bool)
        /// Close at once without a word: the peer cannot or will not take one.
        case abort(ConnectionEnd, reason: String)
        /// Close at once; the connection ended for this reason (if the handler has none yet).
        case close(ConnectionEnd?)
    }

    /// What `nextMessage` found.
    enum Message: Equatable {
        /// A whole message: answer it, then ask for the next.
        case answer(ByteBuffer)
        /// Nothing more in what has arrived.
        case none
        /// The message in progress broke a rule: carry out the action.
        case reject(Action)
    }

    /// During a drain, how long a connection that was just accepted, or just answered, gets to send its next
    /// message (and to finish its TLS handshake) before it is closed.
    static let drainGrace: TimeAmount = .seconds(1)

    let idleTimeout: TimeAmount
    let messageTimeout: TimeAmount
    /// Whether TLS runs below the protocol (else a ClientHello arriving is a TLS client on the plaintext port).
    let behindTLS: Bool
    private(set) var state = State.serving
    /// What has arrived and is not yet a whole message (nothing, between messages).
    private var framer: MessageFramer
    /// When a byte last arrived, the handshake finished, or the peer last took replies after a stall.
    private(set) var lastActivity: NIODeadline
    /// When the first byte of the message in progress arrived (nil between messages).
    private(set) var messageStarted: NIODeadline?
    /// Since when the peer has not been taking its replies (reads are held meanwhile).
    private(set) var stalledSince: NIODeadline?
    private(set) var draining = false
    private var receivedAny = false
    /// Whether a message of the read being framed was answered (what is left then began with this read).
    private var answeredInRead = false

    init(
        framing: Framing,
        maximumMessageLength: Int,
        idleTimeout: TimeAmount,
        messageTimeout: TimeAmount,
        behindTLS: Bool,
        empty: ByteBuffer = ByteBuffer(),
        now: NIODeadline
    ) {
        self.framer = MessageFramer(framing: framing, maximumMessageLength: maximumMessageLength, empty: empty)
        self.idleTimeout = idleTimeout
        self.messageTimeout = messageTimeout
        self.behindTLS = behindTLS
        self.lastActivity = now
    }

    /// Whether a message is in progress (some of it has arrived).
    var inMessage: Bool { self.framer.bufferedBytes > 0 }

    // MARK: reading

    /// Bytes arrived. Then call `nextMessage()` until it says `.none` (or rejects).
    mutating func bytesRead(_ bytes: ByteBuffer, now: NIODeadline) -> Action {
        guard case .serving = self.state else { return .none }  // input is discarded
        self.lastActivity = now
        self.answeredInRead = false
        if !self.receivedAny {
            self.receivedAny = true
            if !self.behindTLS && PeerSigns.looksLikeClientHello(bytes) {
                return self.reject(.notPlaintext, "this port speaks plaintext, not TLS: connect without TLS")
            }
        }
        self.framer.append(bytes)
        return .none
    }

    /// The next whole message of what has arrived.
    mutating func nextMessage() -> Message {
        guard case .serving = self.state else { return .none }
        do {
            if let message = try self.framer.next() {
                self.answeredInRead = true
                return .answer(message)
            }
        } catch {
            return .reject(self.reject(.tooLarge, error.description))
        }
        // What is left began with this read, unless it is the rest of a message begun earlier.
        if self.framer.bufferedBytes == 0 {
            self.messageStarted = nil
        } else if self.answeredInRead || self.messageStarted == nil {
            self.messageStarted = self.lastActivity
        }
        return .none
    }

    /// A read burst ended. `repliesPending`: whether replies to it wait to be written.
    mutating func readComplete(repliesPending: Bool) -> Action {
        guard case .serving = self.state else { return .none }
        if self.draining && !self.inMessage && repliesPending {
            // Draining: this burst's replies are the connection's last.
            return self.closeAfterReplies(.drained, now: self.lastActivity)
        }
        return repliesPending ? .flush : .none
    }

    /// The channel would read now. While the peer is not taking its replies (`writable` false), messages are not
    /// read either, and its stall clock starts.
    mutating func readRequested(writable: Bool, now: @autoclosure () -> NIODeadline) -> Action {
        if writable { return .read }
        if self.stalledSince == nil { self.stalledSince = now() }
        return .none
    }

    /// The peer began taking replies again (or stopped).
    mutating func writabilityChanged(writable: Bool, now: NIODeadline) -> Action {
        guard writable, self.stalledSince != nil else { return .none }
        self.stalledSince = nil
        self.lastActivity = now
        return .read
    }

    /// The peer finished sending (a half-close, or TLS close_notify): what is left unterminated is its last
    /// message, returned to be answered before the action (then the connection closes).
    mutating func inputClosed(now: NIODeadline) -> (last: ByteBuffer?, then: Action) {
        switch self.state {
        case .serving:
            let last: ByteBuffer?
            do {
                last = try self.framer.finish()
            } catch {
                return (nil, self.reject(.tooLarge, error.description))
            }
            return (last, self.closeAfterReplies(.clientClosed, now: now))
        case .rejecting:
            self.state = .closed
            return (nil, .close(nil))
        case .closing, .closed:
            return (nil, .none)
        }
    }

    /// The TLS handshake finished: the peer's doing too, and its first message follows.
    mutating func handshakeCompleted(now: NIODeadline) {
        self.lastActivity = now
    }

    // MARK: deadlines and drain

    /// The loop's sweep: what to do when one of the connection's deadlines has passed.
    mutating func tick(now: NIODeadline) -> Action {
        switch self.state {
        case .serving:
            if let stalled = self.stalledSince {
                if now >= stalled + self.idleTimeout { return self.abort(.notReading, self.notReading) }
            } else if let started = self.messageStarted {
                if now >= started + self.messageTimeout {
                    return self.reject(
                        .messageTimeout,
                        "timed out: the message was not finished within \(formatSeconds(self.messageTimeout.seconds)) s "
                            + "(the message timeout)"
                    )
                } else if now >= self.lastActivity + self.idleTimeout {
                    return self.reject(
                        .idleMidMessage,
                        "timed out: nothing arrived for \(formatSeconds(self.idleTimeout.seconds)) s in the middle of a "
                            + "message (the idle timeout)"
                    )
                }
            } else if self.draining && now >= self.lastActivity + Self.drainGrace {
                return self.closeAfterReplies(.drained, now: now)
            } else if now >= self.lastActivity + self.idleTimeout {
                return self.closeAfterReplies(.idle, now: now)
            }
        case .closing(let since):
            if now >= since + self.idleTimeout { return self.abort(.notReading, self.notReading) }
        case .rejecting, .closed:
            break  // the linger timer closes a rejected connection
        }
        return .none
    }

    /// The server began to drain (or the connection was accepted while it drains).
    mutating func drain(now: NIODeadline) -> Action {
        self.draining = true
        guard case .serving = self.state, self.messageStarted == nil, !self.inMessage,
            now >= self.lastActivity + Self.drainGrace
        else { return .none }
        return self.closeAfterReplies(.drained, now: now)
    }

    /// The drain timeout ran out with the connection still open.
    mutating func drainTimedOut() -> Action {
        guard self.state != .closed else { return .none }
        self.state = .closed
        return .close(.drainTimeout)
    }

    /// The channel is gone: what was buffered is let go.
    mutating func closed() {
        self.state = .closed
        self.framer.discard()
    }

    // MARK: transitions

    private mutating func closeAfterReplies(_ end: ConnectionEnd, now: NIODeadline) -> Action {
        self.state = .closing(since: now)
        return .closeAfterReplies(end)
    }

    private mutating func reject(_ end: ConnectionEnd, _ reason: String) -> Action {
        self.state = .rejecting
        self.framer.discard()
        self.messageStarted = nil
        let resume = self.stalledSince != nil
        self.stalledSince = nil
        return .reject(end, reason: reason, resumeReading: resume)
    }

    private mutating func abort(_ end: ConnectionEnd, _ reason: String) -> Action {
        self.state = .closed
        self.framer.discard()
        return .abort(end, reason: reason)
    }

    /// Why a connection whose peer stopped taking its replies is closed.
    private var notReading: String { "the peer took no replies for \(formatSeconds(self.idleTimeout.seconds)) s" }
}
