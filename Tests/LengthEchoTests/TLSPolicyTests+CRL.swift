import Foundation
import LengthEcho
import LengthEchoCore
import LengthEchoTLS
import LengthEchoTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The SHA-256 of a certificate's DER SubjectPublicKeyInfo, as the README's openssl pipeline prints it.
/// Revocation: client CRLs, their reload, and a CRL past its next update.
extension TLSPolicyTests {
    @Test("--client-crl: a revoked client is refused with `revoked` on both sides; SIGHUP reads the CRL again")
    func revocation() async throws {
        let certificates = try TestCertificates.generate("revocation")
        let gen = TestCertificates.packageRoot + "/scripts/gen-certs.sh"
        #expect(try run("/bin/bash", [gen, "--out", certificates.directory, "--crl"]).status == 0)
        let crl = certificates.directory + "/crl.pem"
        let (server, port) = try await startServerExecutable([
            "--tls", "--cert", certificates.serverCertificate, "--key", certificates.serverKey, "--client-ca",
            certificates.ca, "--client-auth", "required", "--client-crl", crl, "--quiet", "--log-format", "json",
        ])
        defer { server.terminate() }
        let client = {
            try Executable(
                "client",
                [
                    "--tls", "--ca", certificates.ca, "--cert", certificates.clientCertificate, "--key",
                    certificates.clientKey, "--server-name", "localhost", "--port", "\(port)", "hello",
                ])
        }
        let before = try client()
        #expect(await before.exitStatus() == 0 && before.stdout == "5 : hello\n", "not revoked yet: \(before.stderr)")
        let revoked = try run("/bin/bash", [gen, "--out", certificates.directory, "--revoke", "client"])
        #expect(revoked.status == 0, "\(revoked.output)")
        server.terminate(signal: SIGHUP)
        await server.wait(seconds: 10) { $0.stderr.contains("reloaded the certificate") || !$0.isRunning }
        let after = try client()
        #expect(await after.exitStatus() != 0)
        #expect(after.stderr.contains("revoked"), "\(after.stderr)")
        let lines = await waitForConnectionLines(server, count: 2)
        #expect(
            lines.contains { ($0["detail"] as? String)?.contains("the client's certificate is revoked") == true },
            "\(lines)")
    }

    @Test("a CRL past its next update: every client refused and the reason logged, or accepted with --crl-allow-stale")
    func staleCRL() async throws {
        let certificates = try TestCertificates.generate("stale-crl")
        let directory = certificates.directory
        #expect(
            try run("/bin/bash", [TestCertificates.packageRoot + "/scripts/gen-certs.sh", "--out", directory, "--crl"])
                .status == 0)
        // A CRL whose next update was in 2020, from the same CA database.
        let stale = directory + "/stale.pem"
        let made = try run(
            "/usr/bin/openssl",
            [
                "ca", "-batch", "-config", directory + "/ca-db/ca.cnf", "-cert", certificates.ca, "-keyfile",
                directory + "/ca.key", "-gencrl", "-crl_lastupdate", "20200101000000Z", "-crl_nextupdate",
                "20200201000000Z", "-out", stale,
            ])
        #expect(made.status == 0, "\(made.output)")
        for allow in [false, true] {
            let (server, port) = try await startServerExecutable(
                [
                    "--tls", "--cert", certificates.serverCertificate, "--key", certificates.serverKey, "--client-ca",
                    certificates.ca, "--client-auth", "required", "--client-crl", stale, "--quiet",
                ] + (allow ? ["--crl-allow-stale"] : []))
            defer { server.terminate() }
            await server.wait(seconds: 10) { $0.stderr.contains("past its next-update date") || !$0.isRunning }
            #expect(server.stderr.contains(allow ? "accepted (--crl-allow-stale)" : "every client is refused"))
            let client = try Executable(
                "client",
                [
                    "--tls", "--ca", certificates.ca, "--cert", certificates.clientCertificate, "--key",
                    certificates.clientKey, "--server-name", "localhost", "--port", "\(port)", "hi",
                ])
            #expect((await client.exitStatus() == 0) == allow, "\(client.stderr)")
            if !allow {
                await server.wait(seconds: 10) { $0.stderr.contains("connection ended") || !$0.isRunning }
                #expect(server.stderr.contains("the CRL is past its next-update date: renew it"))
            }
        }
    }

    @Test("openssl s_client with a revoked certificate gets the certificate_revoked alert")
    func revokedAgainstSClient() async throws {
        let certificates = try TestCertificates.generate("revoked-sclient")
        let gen = TestCertificates.packageRoot + "/scripts/gen-certs.sh"
        #expect(try run("/bin/bash", [gen, "--out", certificates.directory, "--revoke", "client"]).status == 0)
        let (server, port) = try await startServerExecutable([
            "--tls", "--cert", certificates.serverCertificate, "--key", certificates.serverKey, "--client-ca",
            certificates.ca, "--client-auth", "required", "--client-crl", certificates.directory + "/crl.pem",
            "--quiet",
        ])
        defer { server.terminate() }
        let output = try await self.sClient(
            port: port, ca: certificates.ca,
            "-cert \(certificates.clientCertificate) -key \(certificates.clientKey) -tls1_2")
        #expect(output.contains("alert certificate revoked"), "\(output)")
    }
}
