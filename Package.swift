// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "length-echo",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "server", targets: ["server"]),
        .executable(name: "client", targets: ["client"]),
        .executable(name: "bench", targets: ["bench"]),
        .library(name: "LengthEcho", targets: ["LengthEcho", "LengthEchoTLS"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift.git", from: "0.2.0"),
    ],
    targets: [
        // C glue: the system OpenSSL, plus static inline shims for the macros Swift cannot import.
        .systemLibrary(
            name: "COpenSSL",
            pkgConfig: "openssl",
            providers: [.apt(["libssl-dev"])]
        ),
        // The TLS layer: an owned SSL_CTX per role and one NIO handler driving OpenSSL through memory BIOs.
        .target(
            name: "LengthEchoTLS",
            dependencies: [
                "COpenSSL",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // Protocol, server and client: the length-echo library the executables are thin over.
        .target(
            name: "LengthEcho",
            dependencies: [
                "LengthEchoTLS",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "server",
            dependencies: [
                "LengthEcho",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
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
                "LengthEchoTLS",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ]
        ),
        .testTarget(
            name: "LengthEchoTests",
            dependencies: [
                "LengthEcho",
                "LengthEchoTLS",
                "server",
                "client",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
            ]
        ),
    ]
)
