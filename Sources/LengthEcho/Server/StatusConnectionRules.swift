import NIOCore

extension StatusServer {
    /// The limits of the status port: how many connections, how large and how slow a request may be.
    public struct Limits: Sendable, Equatable {
        /// Status connections open at once; further ones get 503 and are closed at once.
        public var maximumConnections = 64
        /// The request line and header fields together, in bytes (431 beyond it).
        public var maximumHeadBytes = 8 * 1024
        /// Header fields in one request (431 beyond it).
        public var maximumHeaderFields = 100
        /// From a request's first byte to the end of its head (408 beyond it, then closed).
        public var headTimeout: TimeAmount = .seconds(5)
        /// From the end of a response (or the connection's start) to the next request's first byte.
        public var idleTimeout: TimeAmount = .seconds(30)
        /// From a request's head to its response written to the socket (a peer that does not read is closed).
        public var answerTimeout: TimeAmount = .seconds(10)

        /// The defaults above.
        public init() {}
    }
}

/// Spelled as before inside the package.
package typealias StatusLimits = StatusServer.Limits

/// One status connection's rules, as a value: it is told what arrived and when, and what was answered and when,
/// and says what to do. It reads no clock; the handler gives it `now`.
///
/// It reads the raw bytes ahead of the HTTP parser, so a head that is too large or has too many fields is
/// refused before the parser holds it. A head ends at its empty line; the status port takes no request bodies
/// (the handler refuses one), so what follows belongs to the next request. Deadlines: the idle time runs from
/// the last response (it is not renewed by bytes that do not finish a head); a head must end within
/// `headTimeout` of its first byte; every response must be written within `answerTimeout` of its request.
struct StatusConnectionRules {
    enum Action: Equatable {
        case none
        /// Answer with this status and close (the head broke a limit, or did not end in time).
        case refuse(HTTPRefusal)
        /// Close without a word (idle, or the peer does not take its answers).
        case close
    }

    enum HTTPRefusal: Equatable {
        case headTooLarge
        case tooManyFields
        case headTimeout
    }

    let limits: StatusLimits
    /// When the head being read began (nil between requests).
    private var headStarted: NIODeadline?
    private var headBytes = 0
    private var headFields = 0
    /// The length of the line being read, not counting a CR.
    private var lineLength = 0
    /// Requests whose head ended and whose response is not written yet, and since when the oldest waits.
    private var unanswered = 0
    private var answerDue: NIODeadline?
    /// Since when nothing has been asked (the connection's start, or the last response).
    private var idleSince: NIODeadline
    private var refused = false

    init(limits: StatusLimits, now: NIODeadline) {
        self.limits = limits
        self.idleSince = now
    }

    /// Bytes arrived. Returns `.refuse` when they break a head's limits.
    mutating func received(_ bytes: UnsafeRawBufferPointer, now: NIODeadline) -> Action {
        guard !self.refused else { return .none }
        for byte in bytes {
            if self.headStarted == nil { self.headStarted = now }
            self.headBytes += 1
            switch byte {
            case UInt8(ascii: "\n"):
                if self.lineLength == 0 && self.headFields > 0 {
                    self.headEnded(now: now)  // the empty line: the head is complete
                    continue
                }
                // The request line counts as one; empty lines before it are ignored (RFC 9112 2.2).
                if self.lineLength > 0 { self.headFields += 1 }
                self.lineLength = 0
            case UInt8(ascii: "\r"):
                break
            default:
                self.lineLength += 1
            }
            if self.headBytes > self.limits.maximumHeadBytes { return self.refuse(.headTooLarge) }
            if self.headFields > self.limits.maximumHeaderFields + 1 { return self.refuse(.tooManyFields) }
        }
        return .none
    }

    private mutating func headEnded(now: NIODeadline) {
        self.headStarted = nil
        self.headBytes = 0
        self.headFields = 0
        self.lineLength = 0
        if self.unanswered == 0 { self.answerDue = now + self.limits.answerTimeout }
        self.unanswered += 1
    }

    private mutating func refuse(_ why: HTTPRefusal) -> Action {
        self.refused = true
        return .refuse(why)
    }

    /// A response was written to the socket.
    mutating func answered(now: NIODeadline) {
        self.unanswered = max(self.unanswered - 1, 0)
        self.answerDue = self.unanswered > 0 ? now + self.limits.answerTimeout : nil
        self.idleSince = now
    }

    /// What the deadlines say at `now`.
    mutating func check(now: NIODeadline) -> Action {
        guard !self.refused else { return .none }
        if let due = self.answerDue, now >= due { return .close }
        if let started = self.headStarted {
            return now >= started + self.limits.headTimeout ? self.refuse(.headTimeout) : .none
        }
        if self.unanswered == 0, now >= self.idleSince + self.limits.idleTimeout { return .close }
        return .none
    }
}

extension StatusConnectionRules.HTTPRefusal {
    /// The whole response: status line, headers, and a one-line body saying what was wrong.
    var response: String {
        let (status, body): (String, String) =
            switch self {
            case .headTooLarge: ("431 Request Header Fields Too Large", "request head over the limit\n")
            case .tooManyFields: ("431 Request Header Fields Too Large", "too many header fields\n")
            case .headTimeout: ("408 Request Timeout", "the request head did not arrive in time\n")
            }
        return "HTTP/1.1 \(status)\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: \(body.utf8.count)\r\n"
            + "connection: close\r\n\r\n\(body)"
    }
}
