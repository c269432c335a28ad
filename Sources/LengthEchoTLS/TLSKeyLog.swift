internal import COpenSSL
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The NSS key log (`SSLKEYLOGFILE` format) for debugging: every TLS secret of every connection appended to
/// one file, mode 0600, so Wireshark or tshark can decrypt a capture. It defeats the encryption for anyone who
/// can read the file: a program turns it on only when asked by name (never by environment variable alone)
/// and says so.
package enum TLSKeyLog {
    /// The open key log, or -1. One per process, set before the contexts that log to it are built.
    private static let descriptor = Atomic<Int32>(-1)

    /// Opens (creates, mode 0600, or appends to) `path` for the contexts built from now on with `keyLog: true`.
    /// Only a regular file of this user's is taken: a symbolic link could send the secrets elsewhere, and a FIFO
    /// or device is no log (opening one would block or write anywhere). An existing file with looser permissions
    /// is made 0600; the note returned says so, since what it held was exposed.
    @discardableResult
    package static func open(_ path: String) throws(TLSError) -> String? {
        // O_NONBLOCK: a FIFO with no reader fails at once (ENXIO) instead of blocking the start.
        let fd = Glibc.open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, 0o600)
        guard fd >= 0 else {
            let reason =
                switch errno {
                case ELOOP: "it is a symbolic link: give the file's own path"
                case ENXIO: "it is not a regular file"
                default: String(cString: strerror(errno))
                }
            throw TLSError(.configuration, "cannot use the key log \(path): \(reason)")
        }
        var status = stat()
        var note: String?
        do throws(TLSError) {
            guard fstat(fd, &status) == 0 else {
                throw TLSError(.configuration, "cannot use the key log \(path): \(String(cString: strerror(errno)))")
            }
            guard status.st_mode & S_IFMT == S_IFREG else {
                throw TLSError(.configuration, "cannot use the key log \(path): it is not a regular file")
            }
            guard status.st_uid == geteuid() else {
                throw TLSError(
                    .configuration,
                    "cannot use the key log \(path): it belongs to uid \(status.st_uid), not to this user (uid \(geteuid()))"
                )
            }
            let mode = status.st_mode & 0o777
            if mode & 0o077 != 0 {
                guard fchmod(fd, 0o600) == 0 else {
                    throw TLSError(
                        .configuration,
                        "cannot make the key log \(path) private (mode 0600): \(String(cString: strerror(errno)))")
                }
                note =
                    "the key log \(path) was readable or writable by others (mode 0\(String(mode, radix: 8))); it is 0600 now, but what it held before was exposed"
            }
        } catch {
            close(fd)
            throw error
        }
        let old = Self.descriptor.exchange(fd, ordering: .relaxed)
        if old >= 0 { close(old) }
        return note
    }

    /// Appends one line (OpenSSL's, without its newline) with one `write`: lines from several threads do not mix.
    fileprivate static func append(_ line: UnsafePointer<CChar>) {
        let fd = Self.descriptor.load(ordering: .relaxed)
        guard fd >= 0 else { return }
        let length = strlen(line)
        var bytes = [UInt8](repeating: 0x0A, count: length + 1)
        bytes.withUnsafeMutableBytes { raw in
            raw.baseAddress.map { _ = memcpy($0, line, length) }
            _ = write(fd, raw.baseAddress, raw.count)
        }
    }
}

extension TLSContext {
    /// Logs this context's secrets to the open key log.
    func logKeys(on ctx: OpaquePointer) {
        SSL_CTX_set_keylog_callback(ctx) { _, line in
            if let line { TLSKeyLog.append(line) }
        }
    }
}
