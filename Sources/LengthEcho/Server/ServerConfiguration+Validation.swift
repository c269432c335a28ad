import LengthEchoCore
import LengthEchoTLS
import NIOCore

extension ServerConfiguration {
    /// A setting, by the library's name for it. A program reports a problem in the names its users wrote (a
    /// flag, a file key): `Problem.description(naming:)`.
    public enum Setting: String, Sendable, CaseIterable {
        case port, maximumMessageLength, idleTimeout, messageTimeout, drainTimeout, handshakeTimeout
        case maximumConnections, maximumConnectionsPerAddress, handshakesPerSecondPerAddress, threads, addressPolicy
        case proxyProtocol, proxyTrustedSources, proxyHeaderTimeout
        case tls, clientCA, clientAuthentication, allowedClients, revocation
    }

    /// One thing wrong with a configuration, in words and settings.
    public struct Problem: Error, Sendable, Equatable, CustomStringConvertible {
        /// A piece of the sentence.
        public enum Part: Sendable, Equatable {
            case text(String)
            case setting(Setting)
        }

        /// The sentence, with the settings it names.
        public let parts: [Part]

        /// The sentence, each setting named by `name`.
        public func description(naming name: (Setting) -> String) -> String {
            self.parts.map { part in
                switch part {
                case .text(let text): text
                case .setting(let setting): name(setting)
                }
            }.joined()
        }

        /// The sentence, with the library's names for the settings.
        public var description: String { self.description { $0.rawValue } }
    }

    /// The largest message a server takes: beyond it a limit is a typo or an attack on the process itself.
    public static let largestMessage = 1 << 30
    /// The longest timeout: beyond it a value overflows NIO's clock or is a typo.
    public static let longestTimeout: TimeAmount = .hours(7 * 24)
    /// The most event-loop threads.
    public static let mostThreads = 256

    /// Everything wrong with this configuration, each once; empty when it can be started. The one place a rule
    /// about the configuration is written: programs map their flags and files into it, then ask.
    public func problems() -> [Problem] {
        var problems: [Problem] = []
        func problem(_ parts: Problem.Part...) { problems.append(Problem(parts: parts)) }
        func range(_ setting: Setting, _ value: Int, _ bounds: ClosedRange<Int>, _ note: String = "") {
            guard !bounds.contains(value) else { return }
            problem(.setting(setting), .text(" must be \(bounds.lowerBound)...\(bounds.upperBound)\(note)"))
        }
        range(.port, self.port, 0...65535)
        range(.maximumMessageLength, self.maximumMessageLength, 0...Self.largestMessage, " (1 GiB)")
        range(.maximumConnections, self.maximumConnections, 1...10_000_000)
        range(.threads, self.threads, 1...Self.mostThreads)
        if let limit = self.maximumConnectionsPerAddress { range(.maximumConnectionsPerAddress, limit, 1...10_000_000) }
        var timeouts: [(Setting, TimeAmount, zeroAllowed: Bool)] = [
            (.idleTimeout, self.idleTimeout, false), (.messageTimeout, self.messageTimeout, false),
            (.drainTimeout, self.drainTimeout, true), (.handshakeTimeout, self.handshakeTimeout, false),
        ]
        if let proxy = self.proxyProtocol { timeouts.append((.proxyHeaderTimeout, proxy.headerTimeout, false)) }
        for (setting, value, zeroAllowed) in timeouts
        where (zeroAllowed ? value < .zero : value <= .zero) || value > Self.longestTimeout {
            problem(
                .setting(setting),
                .text(
                    " must be \(zeroAllowed ? "0" : "more than 0") to \(Self.longestTimeout.nanoseconds / 1_000_000_000) seconds (a week)"
                ))
        }
        if let rate = self.handshakesPerSecondPerAddress {
            if self.tls == nil { problem(.setting(.handshakesPerSecondPerAddress), .text(" needs "), .setting(.tls)) }
            range(.handshakesPerSecondPerAddress, rate, 1...1_000_000)
        }
        if let proxy = self.proxyProtocol, proxy.trustedSources.isEmpty {
            problem(
                .setting(.proxyProtocol), .text(" needs "), .setting(.proxyTrustedSources),
                .text(": the balancers' addresses (a header from anyone else would be believed)"))
        }
        if let tls = self.tls { problems += Self.problems(tls) }
        return problems
    }

    private static func problems(_ tls: TLSServerSettings) -> [Problem] {
        var problems: [Problem] = []
        func problem(_ parts: Problem.Part...) { problems.append(Problem(parts: parts)) }
        let asked = tls.clientAuthentication != .none
        if tls.clientCA != nil && !asked {
            problem(
                .setting(.clientCA), .text(" needs "), .setting(.clientAuthentication), .text(" optional or required"))
        }
        if tls.clientCA == nil && asked {
            problem(
                .setting(.clientAuthentication), .text(" \(tls.clientAuthentication.rawValue) needs "),
                .setting(.clientCA), .text(": the CA that signs client certificates"))
        }
        if !tls.allowedClients.isEmpty && !asked {
            problem(
                .setting(.allowedClients), .text(" need "), .setting(.clientAuthentication),
                .text(" optional or required"))
        }
        if tls.revocation != nil && !asked {
            problem(
                .setting(.revocation), .text(" needs "), .setting(.clientAuthentication), .text(" optional or required")
            )
        }
        return problems
    }

    /// Throws the first problem (`problems()` has them all).
    public func validate() throws(Problem) {
        if let first = self.problems().first { throw first }
    }
}
