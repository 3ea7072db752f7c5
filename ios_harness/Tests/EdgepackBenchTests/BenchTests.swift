import CoreML
import EdgepackBench
import XCTest

/// The bench edgepack's `ios://UDID` runner drives with `xcodebuild test-without-building`.
final class BenchTests: XCTestCase {
    private func staged(_ name: String) throws -> URL {
        let resources = try XCTUnwrap(
            Bundle.module.url(forResource: "Resources", withExtension: nil),
            "the test bundle has no Resources folder"
        )
        let url = resources.appendingPathComponent(name)
        guard FileManager.default.fileExists(atPath: url.path) else {
            throw XCTSkip("\(name) is not staged in Tests/EdgepackBenchTests/Resources (edgepack's ios runner stages it)")
        }
        return url
    }

    /// Measures the staged model under each compute-unit setting and attaches the JSON result.
    func testBenchmark() async throws {
        let model = try staged("Model.mlpackage")
        let config = try BenchConfig.load(from: try staged("bench-config.json"))
        let document = try await ModelBench(modelURL: model, config: config).run()

        let attachment = XCTAttachment(data: try document.jsonData(), uniformTypeIdentifier: "public.json")
        attachment.name = ResultDocument.attachmentName
        attachment.lifetime = .keepAlways  // the default deletes attachments of passing tests
        add(attachment)

        XCTAssertTrue(document.runs.contains { $0.isMeasured }, "no compute-unit setting could run the model")
    }

    /// Xcode's own memory and clock metrics of steady-state prediction (.all), shown in the test report.
    /// Synchronous on purpose: XCTest's measure blocks belong on the test's own thread.
    func testMemoryMetric() throws {
        let package = try staged("Model.mlpackage")
        let compiled = try MLModel.compileModel(at: package)
        defer { try? FileManager.default.removeItem(at: compiled) }
        let model = try MLModel(contentsOf: compiled)
        let (features, _) = try SyntheticInputs.make(for: model.modelDescription, seed: 0)
        _ = try model.prediction(from: features)

        let options = XCTMeasureOptions()
        options.iterationCount = 5
        measure(metrics: [XCTMemoryMetric(), XCTClockMetric()], options: options) {
            for _ in 0..<20 {
                _ = try? model.prediction(from: features)
            }
        }
    }
}
