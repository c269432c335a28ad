import LengthEchoCore
import LengthEchoTLS
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A length-echo client: the tutorial's `socket()`, `connect()`, `write()` and `read()`.
///
/// It keeps one connection open and reuses it; when the server closes it after a reply (as the original C
/// server does after every one), the next message goes over a new connection. Concurrent `send` calls are
/// pipelined on the one connection and each gets its own reply.
public actor LengthEchoClient {
    /// What the client was made with.
    public let configuration: ClientConfiguration
    private let group: any EventLoopGroup
    private var channel: (any Channel)?
    private var failure = ConnectionFailure()
    /// True while the current connection has not yet delivered a reply.
    private var fresh = true
    private var connecting: Task<(any Channel, TLSConnectionInfo?, ConnectionFailure), any Error>?
    /// What the last TLS handshake agreed on (nil for plaintext).
    public private(set) var tlsInfo: TLSConnectionInfo?
    private var connectedSinceAsked = false
    /// The last TLS session the server gave us, offered for resumption on the next connection.
    private var session: TLSSession?
    /// New connections made because the server had closed the one in use after its last reply (an idle
    /// timeout, the original C server's close after every reply). Not errors.
    public private(set) var reconnects = 0
    /// Messages sent again because the server closed the connection before their reply began (a drain, a
    /// balancer's backend going away). Length-echo requests are idempotent, so this is safe. Not errors.
    public private(set) var resends = 0
    /// How many times in a row one `send` resends before it reports the closed connection as an error.
    public static let mostResends = 3

    /// True once after each new connection: lets a caller report each handshake once.
    package func takeNewConnectionFlag() -> Bool {
        defer { self.connectedSinceAsked = false }
        return self.connectedSinceAsked
    }

    /// A client that connects on its first message; `group` defaults to NIO's shared one.
    public init(configuration: ClientConfiguration, group: (any EventLoopGroup)? = nil) {
        self.configuration = configuration
        self.group = group ?? MultiThreadedEventLoopGroup.singleton
    }

    /// Sends `message` and returns the server's reply once it has checked that the reply echoes it.
    ///
    /// - Throws: `LengthEchoError`: `.serverError` for an `error: ` reply, `.invalidReply` or
    ///   `.replyMismatch` for a reply that is not the echo, and connection errors.
    public func send(_ message: some Collection<UInt8>) async throws -> EchoReply {
        let message = Array(message)
        return try await self.send(batch: [message])[0]
    }

    /// Sends every message at once on one connection (pipelining) and returns their replies in order.
    public func send(pipelined messages: [[UInt8]]) async throws -> [EchoReply] {
        try await self.send(batch: messages)
    }

    private func send(batch messages: [[UInt8]]) async throws -> [EchoReply] {
        for message in messages {
            if let problem = self.configuration.framing.problem(sending: message) { throw problem }
        }
        var attempts = 0
        while true {
            let channel = try await self.connection()
            let reusing = !self.fresh
            do {
                let raw: [ByteBuffer]
                do {
                    raw = try await Self.exchange(
                        messages,
                        framing: self.configuration.framing,
                        on: channel,
                        timeout: self.configuration.replyTimeout
                    )
                } catch LengthEchoError.closedBeforeReply {
                    // Report why the connection died, when something said so.
                    throw self.failure.recorded ?? LengthEchoError.closedBeforeReply
                }
                if self.fresh {
                    self.fresh = false
                    await self.keepSession(of: channel)
                }
                return try zip(messages, raw).map { message, reply in try Self.validate(reply, of: message) }
            } catch  where attempts < Self.mostResends && Self.closedByPeer(error) {
                // The connection closed before any of the replies began (a partial reply is a different,
                // mismatch error). After a previous reply: the server closed it as the original C server always
                // does, or idle. Otherwise the server or the balancer's backend went away. Either way nothing
                // was answered: send again on a new connection.
                if reusing && attempts == 0 { self.reconnects += 1 } else { self.resends += 1 }
                attempts += 1
                self.drop(channel)
            } catch {
                self.drop(channel)
                throw error
            }
        }
    }

    /// Connects (and completes the TLS handshake) now rather than at the first message. Returns what the
    /// handshake agreed on, or nil for plaintext.
    @discardableResult
    public func connect() async throws -> TLSConnectionInfo? {
        _ = try await self.connection()
        return self.tlsInfo
    }

    /// Closes the connection. A TLS session is kept, so the next connection can resume it.
    public func close() async {
        if let channel = self.channel {
            self.channel = nil
            await self.keepSession(of: channel)
            try? await channel.close()
        }
    }

    /// Remembers the TLS session of `channel` (it arrives with the first data after a TLS 1.3 handshake), so
    /// a reconnection resumes it instead of paying for a full handshake.
    private func keepSession(of channel: any Channel) async {
        guard self.configuration.tls != nil, channel.isActive else { return }
        let session = try? await channel.eventLoop.submit {
            try channel.pipeline.syncOperations.handler(type: TLSHandler.self).session
        }.get()
        if let session { self.session = session }
    }

    private func drop(_ channel: any Channel) {
        if self.channel === channel {
            self.channel = nil
        }
        channel.close(promise: nil)
    }

    private func connection() async throws -> any Channel {
        if let channel = self.channel {
            if channel.isActive { return channel }
            // The server closed it since the last reply (idle, or as the original C server always does).
            self.channel = nil
            self.reconnects += 1
        }
        if let connecting = self.connecting { return try await connecting.value.0 }
        let task = Task { [configuration, group, session] in
            try await Self.connect(configuration, group: group, session: session)
        }
        self.connecting = task
        defer { self.connecting = nil }
        let (channel, info, failure) = try await task.value
        self.channel = channel
        self.failure = failure
        self.tlsInfo = info
        self.connectedSinceAsked = true
        self.fresh = true
        return channel
    }

    /// `connect()`, then the TLS handshake when TLS is on: a connection is returned ready for messages.
    private static func connect(
        _ configuration: ClientConfiguration, group: any EventLoopGroup, session: TLSSession?
    ) async throws
        -> (any Channel, TLSConnectionInfo?, ConnectionFailure)
    {
        let failure = ConnectionFailure()
        let maximumReplyLength = configuration.maximumReplyLength
        let framing = configuration.framing
        let loop = group.next()
        let handshake = configuration.tls == nil ? nil : loop.makePromise(of: TLSConnectionInfo.self)
        let bootstrap = ClientBootstrap(group: loop)
            .connectTimeout(configuration.connectTimeout)
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let tls = configuration.tls {
                        try channel.pipeline.syncOperations.addHandler(
                            TLSHandler(
                                context: tls,
                                expectedHost: configuration.serverName ?? configuration.host,
                                handshakeTimeout: configuration.handshakeTimeout,
                                handshakeCompleted: handshake,
                                resuming: session
                            )
                        )
                    }
                    try channel.pipeline.syncOperations.addHandler(
                        LengthEchoClientHandler(
                            framing: framing, maximumReplyLength: maximumReplyLength, failure: failure)
                    )
                }
            }
        let channel: any Channel
        do {
            channel = try await bootstrap.connect(host: configuration.host, port: configuration.port).get()
        } catch {
            handshake?.fail(error)
            if error is TLSError { throw error }
            throw Self.explain(error, configuration)
        }
        guard let handshake else { return (channel, nil, failure) }
        do {
            return (channel, try await handshake.futureResult.get(), failure)
        } catch {
            channel.close(promise: nil)
            throw error
        }
    }

    /// Writes all of `messages` and flushes once; returns the raw replies in order.
    private static func exchange(
        _ messages: [[UInt8]],
        framing: Framing,
        on channel: any Channel,
        timeout: TimeAmount
    ) async throws -> [ByteBuffer] {
        let loop = channel.eventLoop
        var replies: [EventLoopPromise<ByteBuffer>] = []
        replies.reserveCapacity(messages.count)
        for message in messages {
            var bytes = channel.allocator.buffer(capacity: message.count + 1)
            framing.writeRequest(message, into: &bytes)
            let reply = loop.makePromise(of: ByteBuffer.self)
            channel.write(ClientRequest(bytes: bytes, reply: reply)).whenFailure { _ in
                reply.fail(LengthEchoError.closedBeforeReply)
            }
            replies.append(reply)
        }
        channel.flush()
        let waiting = replies
        let timer = loop.scheduleTask(in: timeout) {
            // A promise already completed ignores this.
            let error = LengthEchoError.replyTimeout(seconds: timeout.seconds)
            for reply in waiting { reply.fail(error) }
            channel.close(promise: nil)
        }
        defer { timer.cancel() }
        return try await EventLoopFuture.whenAllSucceed(replies.map(\.futureResult), on: loop).get()
    }

    /// Whether `error` only says that the peer had closed the connection.
    static func closedByPeer(_ error: any Error) -> Bool {
        switch error {
        case LengthEchoError.closedBeforeReply, ChannelError.ioOnClosedChannel, ChannelError.outputClosed,
            ChannelError.eof:
            return true
        case let error as IOError:
            return error.errnoCode == ECONNRESET || error.errnoCode == EPIPE
        case let error as TLSError:
            return error.kind == .uncleanShutdown
        default:
            return false
        }
    }

    static func validate(_ raw: ByteBuffer, of message: [UInt8]) throws -> EchoReply {
        let bytes = Array(raw.readableBytesView)
        switch try ParsedReply(bytes: bytes) {
        case .error(let reason):
            throw LengthEchoError.serverError(reason)
        case .echo(let length, let echoed):
            guard echoed == message else {
                throw LengthEchoError.replyMismatch(sent: message.count, echoed: echoed.count)
            }
            return EchoReply(bytes: bytes, length: length)
        }
    }

    static func explain(_ error: any Error, _ configuration: ClientConfiguration) -> LengthEchoError {
        let host = configuration.host
        let port = configuration.port
        if let error = error as? LengthEchoError { return error }
        if case ChannelError.connectTimeout = error {
            return .connectTimeout(host: host, port: port, seconds: configuration.connectTimeout.seconds)
        }
        var errnos: [Int32] = []
        if let error = error as? IOError { errnos.append(error.errnoCode) }
        if let error = error as? NIOConnectionError {
            if error.connectionErrors.isEmpty, error.dnsAError != nil || error.dnsAAAAError != nil {
                return .hostNotFound(host)
            }
            for failure in error.connectionErrors {
                if let inner = failure.error as? IOError { errnos.append(inner.errnoCode) }
                if case ChannelError.connectTimeout = failure.error {
                    return .connectTimeout(
                        host: host, port: port, seconds: configuration.connectTimeout.seconds)
                }
            }
        }
        if error is SocketAddressError { return .hostNotFound(host) }
        if errnos.contains(ECONNREFUSED) { return .connectionRefused(host: host, port: port) }
        if let first = errnos.first {
            return .connectFailed(host: host, port: port, reason: String(cString: strerror(first)))
        }
        return .connectFailed(host: host, port: port, reason: "\(error)")
    }
}
