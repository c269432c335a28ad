// swift-tools-version:6.1
import Foundation
import PackageDescription

// Linux only: the TLS layer links the system OpenSSL (Debian's libssl-dev) and the server uses Linux socket
// options. Layers, lowest first: COpenSSL · LengthEchoCore · LengthEchoTLS · LengthEcho · the executables.
let package = Package(
    name: "length-echo",
    products: [
        .executable(name: "server", targets: ["server"]),
        .executable(name: "client", targets: ["client"]),
        .executable(name: "bench", targets: ["bench"]),
        // One import for a library user: LengthEcho re-exports what its API takes from the lower layers.
        .library(name: "LengthEcho", targets: ["LengthEcho"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift.git", from: "0.2.0"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        // The server's configuration file (YAML) and environment, beside its flags.
        .package(url: "https://github.com/apple/swift-configuration.git", from: "1.4.0", traits: ["YAML"]),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.2"),
        .package(url: "https://github.com/apple/swift-system.git", from: "1.8.1"),
        // `swift package generate-documentation` (scripts/docs.sh): the library's DocC reference.
        .package(url: "https://github.com/swiftlang/swift-docc-plugin.git", from: "1.5.0"),
    ],
    targets: [
        // C glue: the system OpenSSL, plus static inline shims for the macros Swift cannot import.
        .systemLibrary(
            name: "COpenSSL",
            pkgConfig: "openssl",
            providers: [.apt(["libssl-dev"])]
        ),
        // The core: wire format (framing, replies, errors, escaping), the peer identity, shared NIO
        // plumbing and scratch buffers. NIOCore only: no OpenSSL, no sockets.
        .target(
            name: "LengthEchoCore",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio")
            ]
        ),
        // The TLS layer: an owned SSL_CTX per role and one NIO handler driving OpenSSL through a ByteBuffer
        // BIO. OpenSSL is an internal import: no OpenSSL type appears in its interface. It logs nothing: what
        // happened reaches the stages above as events and errors.
        .target(
            name: "LengthEchoTLS",
            dependencies: [
                "COpenSSL",
                "LengthEchoCore",
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
        // Server and client: listeners, the connection pipeline, the protocol handlers, the status port
        // (HTTP/1.1: health, readiness, metrics through swift-metrics, whose backend the program chooses).
        .target(
            name: "LengthEcho",
            dependencies: [
                "LengthEchoCore",
                "LengthEchoTLS",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
            ]
        ),
        .executableTarget(
            name: "server",
            dependencies: [
                "LengthEcho",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "Configuration", package: "swift-configuration"),
                .product(name: "Yams", package: "Yams"),
                .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
        .executableTarget(
            name: "client",
            dependencies: [
                "LengthEcho",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The load generator for the benchmark suite.
        .executableTarget(
            name: "bench",
            dependencies: [
                "LengthEcho",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ]
        ),
        // The README's library example, verbatim (a test checks the README against it and runs it): it imports
        // LengthEcho alone.
        .executableTarget(
            name: "library-example",
            dependencies: ["LengthEcho"],
            path: "Examples/library-example"
        ),
        // The DocC catalog's TLS example, verbatim (a test checks the article against it and runs it).
        .executableTarget(
            name: "tls-example",
            dependencies: ["LengthEcho"],
            path: "Examples/tls-example"
        ),
        // Test support shared by the test targets: certificates from scripts/gen-certs.sh, processes.
        .target(
            name: "LengthEchoTestSupport",
            dependencies: [
                "LengthEchoTLS"
            ],
            path: "Tests/Support"
        ),
        // Pure wire-format tests: no sockets, no OpenSSL.
        .testTarget(
            name: "LengthEchoCoreTests",
            dependencies: [
                "LengthEchoCore",
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
        // The TLS layer on EmbeddedChannels, with virtual time.
        .testTarget(
            name: "LengthEchoTLSTests",
            dependencies: [
                "COpenSSL",
                "LengthEchoCore",
                "LengthEchoTLS",
                "LengthEchoTestSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
            ]
        ),
        // Server, client and executables over real sockets, real OpenSSL and real peers.
        .testTarget(
            name: "LengthEchoTests",
            dependencies: [
                "LengthEcho",
                "LengthEchoCore",
                "LengthEchoTLS",
                "LengthEchoTestSupport",
                "server",
                "client",
                "bench",
                "library-example",
                "tls-example",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
    ]
)

// Fuzz targets (libFuzzer), only when asked: `scripts/fuzz.sh` builds them with LENGTH_ECHO_FUZZ=1 and
// `-sanitize=fuzzer,address`; each entry point hands its callback to libFuzzer's driver. A normal build never
// sees them.
if ProcessInfo.processInfo.environment["LENGTH_ECHO_FUZZ"] != nil {
    package.targets.append(.target(name: "CFuzzer", path: "Fuzz/CFuzzer"))
    for name in ["FuzzFramer", "FuzzReplyParser", "FuzzTLS", "FuzzProxyProtocol"] {
        package.targets.append(
            .executableTarget(
                name: name,
                dependencies: [
                    "CFuzzer",
                    "LengthEchoCore",
                    "LengthEchoTLS",
                    .product(name: "NIOCore", package: "swift-nio"),
                    .product(name: "NIOEmbedded", package: "swift-nio"),
                ],
                path: "Fuzz/\(name)"
            )
        )
    }
}
