import LengthEchoCore
import LengthEchoTLS
import NIOCore

/// The one place a server connection's pipeline is built, stage by stage, lowest first:
///
///     socket → [PROXY protocol] → admission (the connection cap) → [TLS] → protocol (framing, replies, timeouts)
///
/// A new stage is one line here. Every stage shares the connection's `ConnectionRecord` (and in it the
/// `ConnectionPeer`), so whoever learns who the client really is (a PROXY header) tells all the others, and
/// whoever ends the connection says why in its one log line.
enum ConnectionPipeline {
    /// Socket reads grow up to 128 KiB (NIO's default stops at 64 KiB), so a 64 KiB message with its TLS
    /// records' overhead arrives in one read rather than two; they shrink again when reads get small. They
    /// start at 1 KiB (NIO's default: 2 KiB), enough for a ClientHello: NIO keeps each connection's last read
    /// buffer for its next read, so an idle TLS connection holds 1 KiB less (18.5 KiB instead of 19.6).
    static let readSizes = AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 1024, maximum: 128 * 1024)

    /// Runs on the child channel's event loop, synchronously, as the connection is accepted.
    static func configure(
        _ channel: any Channel,
        configuration: ServerConfiguration,
        loopState: ServerLoopState,
        tls: TLSContext?,
        tracker: ConnectionTracker,
        limits: AddressLimits
    ) throws {
        // A client's half-close is its last message, not the end of the conversation.
        try channel.syncOptions?.setOption(.allowRemoteHalfClosure, value: true)
        try channel.syncOptions?.setOption(.recvAllocator, value: Self.readSizes)
        let record = ConnectionRecord(peer: ConnectionPeer(address: channel.remoteAddress))
        let logger = configuration.logger
        let sink = configuration.connectionLog
        var admittedAddress: AddressKey?
        channel.closeFuture.assumeIsolated().whenComplete { _ in
            if let key = admittedAddress { limits.release(key) }
            record.log(to: logger, sink: sink)
            loopState.ended(record)
        }

        // The stages after the peer is known: admission (who may connect, how many from one address, how
        // fast they may make us do TLS handshakes, the cap), then TLS and the protocol.
        let serve = { (pipeline: ChannelPipeline.SynchronousOperations) throws in
            if let policy = configuration.addressPolicy, let why = policy.refusal(for: record.peer.address) {
                record.end(.denied, detail: why)
                channel.close(promise: nil)
                return
            }
            let key = AddressKey(record.peer.address)
            if let key {
                guard limits.admit(key) else {
                    record.end(.perAddressLimit)
                    try pipeline.addHandler(BusyRejectHandler(refusal: loopState.perAddressRefusal))
                    return
                }
                admittedAddress = key
                if tls != nil {
                    let (allowed, log) = limits.takeHandshake(key)
                    guard allowed else {
                        if log {
                            logger.notice(
                                "refusing TLS handshakes from this address: more than \(limits.handshakesPerSecond ?? 0) a second",
                                metadata: record.peer.loggerMetadata)
                        }
                        record.end(.handshakeRate)
                        channel.close(promise: nil)
                        return
                    }
                }
            }
            guard tracker.admit() else {
                if loopState.logBudget.allow(logger: logger) {
                    logger.warning(
                        "refusing a connection: \(tracker.limit) connections are open, the limit",
                        metadata: record.peer.loggerMetadata)
                }
                record.end(.busy)
                try pipeline.addHandler(BusyRejectHandler(refusal: loopState.busyRefusal))
                return
            }
            do {
                if let tls {
                    try pipeline.addHandler(
                        TLSHandler(
                            context: tls,
                            handshakeTimeout: configuration.handshakeTimeout,
                            plaintextRefusal: loopState.plaintextRefusal,
                            buffers: loopState.buffers,
                            peer: record.peer,
                            logger: logger,
                            logBudget: loopState.logBudget
                        )
                    )
                }
                try pipeline.addHandler(
                    LengthEchoServerHandler(
                        configuration: configuration, loopState: loopState, tracker: tracker, record: record)
                )
            } catch {
                // The protocol handler, which releases the slot when removed, is not in place.
                tracker.release()
                throw error
            }
        }

        let pipeline = channel.pipeline.syncOperations
        do {
            try Self.stages(pipeline, proxy: configuration.proxyProtocol, record: record, serve: serve)
        } catch {
            record.end(.error, detail: "the connection could not be set up: \(error)")
            throw error
        }
    }

    private static func stages(
        _ pipeline: ChannelPipeline.SynchronousOperations,
        proxy: ProxyProtocolConfiguration?,
        record: ConnectionRecord,
        serve: @escaping (ChannelPipeline.SynchronousOperations) throws -> Void
    ) throws {
        if let proxy {
            try pipeline.addHandler(
                ProxyProtocolHandler(trusted: proxy.trustedSources, timeout: proxy.headerTimeout, record: record) {
                    context in try serve(context.pipeline.syncOperations)
                }
            )
        } else {
            try serve(pipeline)
        }
    }
}
