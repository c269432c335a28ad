import LengthEchoCore
import Logging

extension LogBudget {
    /// Whether a line about a connection may go to `logger` now; lines held back are counted there once the
    /// next second begins.
    func allow(logger: Logger) -> Bool {
        self.allow { count in
            logger.notice("\(count) lines about connections were not logged in the last second (too many)")
        }
    }
}

extension ConnectionPeer {
    /// `peer`, and `via` when there is one, as a log line's metadata.
    var loggerMetadata: Logger.Metadata {
        var metadata: Logger.Metadata = ["peer": .string(self.description)]
        if let via = self.via { metadata["via"] = .string(Self.format(via)) }
        return metadata
    }
}
