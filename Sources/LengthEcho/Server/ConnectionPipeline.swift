import LengthEchoCore
import LengthEchoTLS
import NIOCore

/// The one place a server connection's pipeline is built, stage by stage, lowest first (each stage named: NIO
/// would otherwise format a name for each handler of each connection):
///
///     socket → [PROXY protocol] → admission → [TLS] → protocol (LengthEchoServerHandler)
///
/// The PROXY stage, when configured, learns who the client is before anything else can be decided, so the
/// stages after it are added once it has (`serve`, handed to it). Admission is not a handler: it decides once,
/// and a refused connection gets a one-line answer (`BusyRejectHandler`) or none. Every stage shares the
/// connection's `ConnectionRecord`, so whoever learns who the client really is tells the others, and whoever
/// ends the connection says why. When the channel closes, `ServerLoopState.connectionClosed` accounts for it:
/// the one place its line is logged and what it held released.
enum ConnectionPipeline {
    /// Socket reads grow up to 128 KiB (NIO's default stops at 64 KiB), so a 64 KiB message with its TLS
    /// records' overhead arrives in one read rather than two; they shrink again when reads get small. They
    /// start at 1 KiB (NIO's default: 2 KiB), enough for a ClientHello: NIO keeps each connection's last read
    /// buffer for its next read, so an idle TLS connection holds 1 KiB less (18.5 KiB instead of 19.6).
    static let readSizes = AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 1024, maximum: 128 * 1024)

    /// Runs on the child channel's event loop, synchronously, as the connection is accepted.
    static func configure(
        _ channel: any Channel,
        loopState: ServerLoopState,
        tls: TLSContext?,
        admission: Admission
    ) throws {
        // What the connection keeps from accept to close: the configuration as it is now (a reload changes it
        // for the connections after).
        let configuration = loopState.configuration
        // A client's half-close is its last message, not the end of the conversation.
        try channel.syncOptions?.setOption(.allowRemoteHalfClosure, value: true)
        try channel.syncOptions?.setOption(.recvAllocator, value: Self.readSizes)
        let record = ConnectionRecord(peer: ConnectionPeer(address: channel.remoteAddress), started: .now())
        channel.closeFuture.assumeIsolated().whenComplete { _ in
            loopState.connectionClosed(channel, record: record)
        }
        do {
            if let proxy = configuration.proxyProtocol {
                try channel.pipeline.syncOperations.addHandler(
                    ProxyProtocolHandler(trusted: proxy.trustedSources, timeout: proxy.headerTimeout, record: record) {
                        context in
                        try Self.serve(
                            channel, context.pipeline.syncOperations, record: record, configuration: configuration,
                            loopState: loopState, tls: tls, admission: admission)
                    },
                    name: "proxy"
                )
            } else {
                try Self.serve(
                    channel, channel.pipeline.syncOperations, record: record, configuration: configuration,
                    loopState: loopState, tls: tls, admission: admission)
            }
        } catch {
            record.end(.error, detail: "the connection could not be set up: \(error)")
            throw error
        }
    }

    /// The stages after the peer is known: admission, then TLS and the protocol.
    private static func serve(
        _ channel: any Channel,
        _ pipeline: ChannelPipeline.SynchronousOperations,
        record: ConnectionRecord,
        configuration: ServerConfiguration,
        loopState: ServerLoopState,
        tls: TLSContext?,
        admission: Admission
    ) throws {
        switch admission.admit(record.peer.address, policy: configuration.addressPolicy) {
        case .refused(let end, let detail, let reply, let note):
            record.end(end, detail: detail)
            if let note, loopState.logBudget.allow(logger: configuration.logger) {
                configuration.logger.log(
                    level: note.level, "\(note.message)", metadata: record.peer.loggerMetadata)
            }
            switch reply {
            case .none: channel.close(promise: nil)
            case .busy: try pipeline.addHandler(BusyRejectHandler(refusal: loopState.busyRefusal), name: "busy")
            case .perAddressBusy:
                try pipeline.addHandler(BusyRejectHandler(refusal: loopState.perAddressRefusal), name: "busy")
            }
        case .admitted(let ticket):
            // Held from here: released when the channel closes, whatever happens next.
            record.ticket = ticket
            if let tls {
                try pipeline.addHandler(
                    TLSHandler(
                        context: tls,
                        handshakeTimeout: configuration.handshakeTimeout,
                        plaintextRefusal: loopState.plaintextRefusal,
                        buffers: loopState.buffers
                    ),
                    name: "tls"
                )
            }
            // Behind PROXY the protocol's clock starts once the header is read; else at accept.
            let now = configuration.proxyProtocol == nil ? record.started : .now()
            try pipeline.addHandler(
                LengthEchoServerHandler(
                    configuration: configuration, buffers: loopState.buffers, record: record, now: now),
                name: "length-echo"
            )
            loopState.serve(channel, record: record)
        }
    }
}
