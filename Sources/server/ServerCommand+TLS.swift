import ArgumentParser
import CoreMetrics
import Foundation
import LengthEcho
import LengthEchoCore
import LengthEchoTLS
import Logging
import NIOCore
import Prometheus
import ServiceLifecycle
import Synchronization
import UnixSignals

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The TLS side of the command: its settings from the keys, the key's permissions, the files a reload watches, expiry.
extension ServerCommand {
    func checkKeyPermissions(console: Console) {
        let path = self.tlsOptions.key ?? "certs/server.key"
        var info = stat()
        guard stat(path, &info) == 0 else { return }  // a missing key is reported by the TLS context
        // Readable by everyone, or by a group this server is not in, is a warning; a group of its own (root-owned,
        // mode 0640, group length-echo: the shipped unit's way) is not.
        let groupReads = info.st_mode & 0o070 != 0 && !Self.inGroup(info.st_gid)
        if info.st_mode & 0o007 != 0 || groupReads {
            console.say(
                .warning,
                "warning: the key \(path) is readable by "
                    + "\(info.st_mode & 0o007 != 0 ? "everyone" : "group \(info.st_gid), which this server is not in") "
                    + "(mode \(String(info.st_mode & 0o777, radix: 8))); chmod 600 it")
        }
        if info.st_uid != geteuid() && info.st_uid != 0 {
            console.say(
                .warning,
                "warning: the key \(path) belongs to uid \(info.st_uid), not to this server's uid \(geteuid()) or root")
        }
    }

    /// Whether this process runs with group `gid`, as its own or a supplementary group.
    private static func inGroup(_ gid: gid_t) -> Bool {
        if gid == getegid() { return true }
        let count = getgroups(0, nil)
        guard count > 0 else { return false }
        var groups = [gid_t](repeating: 0, count: Int(count))
        let read = getgroups(count, &groups)
        return read > 0 && groups.prefix(Int(read)).contains(gid)
    }

    /// The TLS flags, mapped into the library's settings (which `ServerConfiguration.validate()` checks).
    func tlsSettings() -> TLSServerSettings {
        var settings = TLSServerSettings()
        if let cert = self.tlsOptions.cert { settings.certificateChain = cert }
        if let key = self.tlsOptions.key { settings.privateKey = key }
        settings.clientCA = self.clients.clientCA
        settings.clientAuthentication = self.clients.clientAuth
        settings.minimumVersion = self.tlsOptions.tlsMin
        settings.requireALPN = self.tlsOptions.alpnRequired
        settings.keyLog = self.tlsOptions.tlsKeylog != nil
        settings.allowedClients = IdentityPolicy(
            commonNames: self.clients.allowCN, dnsNames: self.clients.allowDNS, uris: self.clients.allowURI,
            publicKeySHA256: self.clients.allowSPKI.compactMap(IdentityPolicy.digest(hex:)))
        settings.revocation = self.clients.clientCRL.map {
            RevocationPolicy(
                crlFile: $0, checkWholeChain: self.clients.crlCheckAll, allowStale: self.clients.crlAllowStale)
        }
        return settings
    }

    /// When each certificate file last changed (and its size), to notice a renewal.
    func certificateFilesStamp() -> [String] {
        [
            self.tlsOptions.cert ?? "certs/server.pem", self.tlsOptions.key ?? "certs/server.key",
            self.clients.clientCA, self.clients.clientCRL, self.operations.config,
        ]
        .compactMap {
            $0
        }.map { path in
            var info = stat()
            guard stat(path, &info) == 0 else { return "\(path): missing" }
            return "\(path): \(info.st_mtim.tv_sec).\(info.st_mtim.tv_nsec) \(info.st_size) \(info.st_ino)"
        }
    }

    /// A warning when the certificate expires within 14 days (or has expired), and about stale CRLs.
    static func warnIfExpiring(_ context: TLSContext, console: Console) {
        for stale in context.staleCRLs {
            console.say(
                .warning,
                context.revocation?.allowStale == true
                    ? "warning: the CRL is past its next-update date (\(stale)); accepted (--crl-allow-stale), renew it"
                    : "warning: the CRL is past its next-update date (\(stale)): every client is refused until it is renewed (or pass --crl-allow-stale)"
            )
        }
        guard let notAfter = context.certificateNotAfter else { return }
        let left = Double(notAfter) - Date().timeIntervalSince1970
        guard left < 14 * 24 * 3600 else { return }
        let when = ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: Double(notAfter)))
        console.say(
            .warning,
            left <= 0
                ? "warning: the certificate expired at \(when); renew it and send SIGHUP"
                : "warning: the certificate expires in \(Int(left / 86400)) days (\(when)); renew it and send SIGHUP")
    }
}
