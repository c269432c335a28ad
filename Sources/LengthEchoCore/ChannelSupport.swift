import NIOCore

// Small pieces of NIO plumbing that the TLS layer, the server and the client all need, written once.

package extension TimeAmount {
    /// The amount in seconds.
    var seconds: Double { Double(self.nanoseconds) / 1e9 }

    /// A duration given in (fractional) seconds, as the command lines take them. Saturating: a value too large
    /// (or infinite) is the longest amount, too small the shortest, and NaN a negative one, so a configuration's
    /// checks refuse it instead of the conversion trapping.
    static func fromSeconds(_ seconds: Double) -> TimeAmount {
        guard !seconds.isNaN else { return .nanoseconds(-1) }
        let nanoseconds = seconds * 1e9
        if nanoseconds >= 9.2e18 { return .nanoseconds(.max) }
        if nanoseconds <= -9.2e18 { return .nanoseconds(.min) }
        return .nanoseconds(Int64(nanoseconds))
    }
}

/// Seconds as a person writes them: `60`, `0.3`.
package func formatSeconds(_ seconds: Double) -> String {
    seconds == seconds.rounded() ? String(Int(seconds)) : String(seconds)
}

package extension ChannelHandlerContext {
    /// Closes so that what was written last (an error, an alert) reaches a peer that may still be sending:
    /// once the writes so far are on the wire the write side is shut, input goes on being read (and
    /// discarded by the caller) until the peer closes or `linger` passes, then the connection closes.
    /// Closing at once would answer the peer's unread bytes with a reset, which can destroy what we sent
    /// before the peer reads it.
    ///
    /// - Returns: the timer of the final close, to cancel if the connection ends first.
    func shutOutputThenClose(after linger: TimeAmount) -> Scheduled<Void> {
        let written = self.eventLoop.makePromise(of: Void.self)
        // An empty write completes after every write before it.
        self.writeAndFlush(NIOAny(self.channel.allocator.buffer(capacity: 0)), promise: written)
        written.futureResult.assumeIsolated().whenComplete { _ in
            self.close(mode: .output, promise: nil)
        }
        return self.eventLoop.assumeIsolated().scheduleTask(in: linger) {
            self.close(promise: nil)
        }
    }
}
