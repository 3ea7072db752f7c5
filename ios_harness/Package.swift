// swift-tools-version:5.9
// edgepack iOS bench: an XCTest that compiles a staged .mlpackage on the device, runs it under several
// MLComputeUnits settings and attaches one JSON result (schema: result.schema.json) to the .xcresult.
import PackageDescription

let package = Package(
    name: "EdgepackBench",
    platforms: [.iOS(.v17), .macOS(.v14)],
    products: [
        .library(name: "EdgepackBench", targets: ["EdgepackBench"]),
    ],
    targets: [
        .target(name: "EdgepackBench"),
        .testTarget(
            name: "EdgepackBenchTests",
            dependencies: ["EdgepackBench"],
            // edgepack's ios runner stages Model.mlpackage and bench-config.json here before building.
            // .copy keeps the package as is: the test compiles it with MLModel.compileModel(at:).
            resources: [.copy("Resources")]
        ),
    ]
)
