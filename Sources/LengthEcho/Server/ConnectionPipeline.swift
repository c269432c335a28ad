import LengthEchoCore
import LengthEchoTLS
import NIOCore

/// The one place a server connection's pipeline is built, stage by stage, lowest first:
///
///     socket → [PROXY protocol, later] → [TLS] → protocol (framing, replies, timeouts)
///
/// A new stage is one line here. Every stage shares the connection's `ConnectionPeer`, so whoever learns
/// who the client really is (a PROXY header) tells all the others.
enum ConnectionPipeline {
    /// Runs on the child channel's event loop, synchronously, as the connection is accepted.
    static func configure(
        _ channel: any Channel,
        configuration: ServerConfiguration,
        loopState: ServerLoopState,
        tls: TLSContext?,
        tracker: ConnectionTracker
    ) throws {
        // A client's half-close is its last message, not the end of the conversation.
        try channel.syncOptions?.setOption(.allowRemoteHalfClosure, value: true)
        let peer = ConnectionPeer(address: channel.remoteAddress)
        let pipeline = channel.pipeline.syncOperations
        if let tls {
            try pipeline.addHandler(
                TLSHandler(
                    context: tls,
                    handshakeTimeout: configuration.handshakeTimeout,
                    plaintextRefusal: loopState.plaintextRefusal,
                    buffers: loopState.buffers,
                    peer: peer,
                    logger: configuration.logger,
                    logBudget: loopState.logBudget
                )
            )
        }
        try pipeline.addHandler(
            LengthEchoServerHandler(configuration: configuration, loopState: loopState, tracker: tracker, peer: peer)
        )
    }
}
