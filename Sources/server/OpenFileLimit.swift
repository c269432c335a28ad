#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Each connection is one open file: the soft limit (often 1,024 in a shell) is raised to the hard one at start.
enum OpenFileLimit {
    /// Files the server keeps open besides its connections: listeners, event loops' epoll and wake-up files,
    /// the status port, logs and standard streams.
    static let reserved = 64

    /// Raises the soft limit on open files to the hard limit; returns the limit in force afterwards, or nil
    /// when it cannot be read.
    static func raiseToHard() -> Int? {
        let resource = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
        var limit = rlimit()
        guard getrlimit(resource, &limit) == 0 else { return nil }
        if limit.rlim_cur < limit.rlim_max {
            var raised = limit
            raised.rlim_cur = limit.rlim_max
            if setrlimit(resource, &raised) == 0 { return Int(clamping: raised.rlim_cur) }
        }
        return Int(clamping: limit.rlim_cur)
    }

    /// What to warn of when `maximumConnections` cannot all be open under `limit`, or nil.
    static func warning(maximumConnections: Int, limit: Int) -> String? {
        guard maximumConnections + Self.reserved > limit else { return nil }
        return
            "warning: --max-connections \(maximumConnections) is more than the open-file limit allows (\(limit), the hard limit): about \(max(limit - Self.reserved, 0)) connections can be open at once, and connections past that wait in the listen queue; raise the hard limit (LimitNOFILE= in a systemd unit, ulimit -Hn in a shell)"
    }
}
