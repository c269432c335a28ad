// swift-tools-version:6.0
import PackageDescription

// A benchmark peer only, never part of the product: the length-echo protocol on SwiftNIO with swift-nio-ssl
// (BoringSSL), written as a SwiftNIO user would, so scripts/bench.sh can set length-echo beside the best Swift
// TLS stack. Built by scripts/bench.sh into its own scratch folder.
let package = Package(
    name: "nio-ssl-peer",
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
    ],
    targets: [
        .executableTarget(
            name: "nio-ssl-peer",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ],
            swiftSettings: [.swiftLanguageMode(.v6)]
        )
    ]
)
