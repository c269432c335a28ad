internal import COpenSSL
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The NSS key log (`SSLKEYLOGFILE` format) for debugging: every TLS secret of every connection appended to
/// one file, mode 0600, so Wireshark or tshark can decrypt a capture. It defeats the encryption for anyone who
/// can read the file: a program turns it on only when asked by name (never by environment variable alone)
/// and says so.
public enum TLSKeyLog {
    /// The open key log, or -1. One per process, set before the contexts that log to it are built.
    private static let descriptor = Atomic<Int32>(-1)

    /// Opens (creates, mode 0600, or appends to) `path` for the contexts built from now on with `keyLog: true`.
    public static func open(_ path: String) throws(TLSError) {
        let fd = Glibc.open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            throw TLSError(.configuration, "cannot open the key log \(path): \(String(cString: strerror(errno)))")
        }
        _ = fchmod(fd, 0o600)  // an existing file keeps its contents, not looser permissions
        let old = Self.descriptor.exchange(fd, ordering: .relaxed)
        if old >= 0 { close(old) }
    }

    static var isOpen: Bool { Self.descriptor.load(ordering: .relaxed) >= 0 }

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
