/// Everything that can go wrong in the length-echo protocol, server or client, each with the sentence a
/// user should read. The sentences say what happened and never name a command-line flag: a program built on
/// the library maps the cases to its own advice (see the `server` and `client` executables).
public enum LengthEchoError: Error, Equatable, Sendable, CustomStringConvertible {
    /// More than `limit` bytes arrived without the terminator that ends a message.
    case messageTooLarge(limit: Int)
    /// A message to send contains its framing's terminator, which would end it early.
    case messageContainsTerminator(Framing)
    /// In line framing, a message to send ends with `\r`, which the server takes as part of a `\r\n` ending.
    case messageEndsWithCarriageReturn
    /// The server's reply is not `<length> : <message>` nor `error: <reason>`.
    case invalidReply(String, reason: String)
    /// The reply is well formed but does not echo the message that was sent.
    case replyMismatch(sent: Int, echoed: Int)
    /// The server answered `error: <reason>`.
    case serverError(String)
    /// The server closed the connection before it replied.
    case closedBeforeReply
    /// No reply within the reply timeout.
    case replyTimeout(seconds: Double)
    /// No connection within the connect timeout.
    case connectTimeout(host: String, port: Int, seconds: Double)
    /// Nothing listens on that port.
    case connectionRefused(host: String, port: Int)
    /// The host name did not resolve.
    case hostNotFound(String)
    /// Any other failure to connect, with the system's words.
    case connectFailed(host: String, port: Int, reason: String)
    /// The server could not listen on an address.
    case bindFailed(host: String, port: Int, reason: BindFailure)

    /// Why a listening socket could not be opened.
    public enum BindFailure: Equatable, Sendable {
        case addressInUse
        case permissionDenied
        case noSuchAddress
        case familyNotSupported
        case hostNotFound
        /// Anything else, in the system's words.
        case other(String)
    }

    /// The sentence a user reads.
    public var description: String {
        switch self {
        case .messageTooLarge(let limit):
            return "message exceeds the \(limit)-byte limit"
        case .messageContainsTerminator(let framing):
            return
                "a message cannot contain a \(framing.terminatorName): in \(framing.rawValue) framing it ends each message"
        case .messageEndsWithCarriageReturn:
            return "in line framing a message cannot end with \\r: the server takes \\r\\n as the line's end"
        case .invalidReply(let bytes, let reason):
            return "not a valid length-echo reply (\(reason)): \"\(bytes)\""
        case .replyMismatch(let sent, let echoed):
            return "the reply does not echo the message: sent \(sent) bytes, the server echoed \(echoed) different ones"
                + (echoed < sent ? " (did the server truncate it? the original C server reads at most 1024 bytes)" : "")
        case .serverError(let reason):
            // The server's words reach a terminal: no escape sequences, no forged lines.
            return "the server refused the message: \(Escaping.printable(Array(reason.utf8)))"
        case .closedBeforeReply:
            return "the server closed the connection before replying"
        case .replyTimeout(let seconds):
            return "no reply within \(formatSeconds(seconds)) s"
        case .connectTimeout(let host, let port, let seconds):
            return "could not connect to \(Self.format(host: host, port: port)) within \(formatSeconds(seconds)) s: "
                + "is the host reachable?"
        case .connectionRefused(let host, let port):
            return
                "connection refused by \(Self.format(host: host, port: port)): no server is running on port \(port) there"
        case .hostNotFound(let host):
            return "host not found: \(host)"
        case .connectFailed(let host, let port, let reason):
            return "cannot connect to \(Self.format(host: host, port: port)): \(reason)"
        case .bindFailed(let host, let port, let reason):
            return "cannot listen on \(Self.format(host: host, port: port)): \(reason.describe(port: port))"
        }
    }

    /// `host:port`, with IPv6 literals in brackets.
    package static func format(host: String, port: Int) -> String {
        host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }
}

extension LengthEchoError.BindFailure {
    func describe(port: Int) -> String {
        switch self {
        case .addressInUse: "port \(port) is already in use (is another server running?)"
        case .permissionDenied: "permission denied: ports below 1024 need root or CAP_NET_BIND_SERVICE"
        case .noSuchAddress: "this machine has no such address"
        case .familyNotSupported: "this machine does not support that address family"
        case .hostNotFound: "no such host or address"
        case .other(let reason): reason
        }
    }
}
