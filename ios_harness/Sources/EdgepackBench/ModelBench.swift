import CoreML
import Foundation

/// Compiles an .mlpackage on the device and measures it under each requested compute-unit setting.
///
/// Per setting: load the compiled model (timed) -> first prediction (timed) -> untimed warm-up ->
/// timed loop until `minIters` and `minSeconds` (or `maxIters` / `timeoutS`), one `ContinuousClock`
/// reading either side of each synchronous `prediction(from:)`. The statistics (percentiles, confidence
/// intervals, warm-up detection) are computed by edgepack from `latencies_ms`, not here.
public struct ModelBench {
    public let modelURL: URL
    public let config: BenchConfig

    public init(modelURL: URL, config: BenchConfig) {
        self.modelURL = modelURL
        self.config = config
    }

    public func run() async throws -> ResultDocument {
        let clock = ContinuousClock()
        let compileStart = clock.now
        let compiledURL = try await MLModel.compileModel(at: modelURL)
        let compileMs = milliseconds(clock.now - compileStart)
        defer { try? FileManager.default.removeItem(at: compiledURL) }

        var runs: [RunDocument] = []
        var inputs: [InputDocument] = []
        for units in config.computeUnits {
            do {
                let (run, described) = try await measure(compiledURL: compiledURL, units: units)
                runs.append(.measured(run))
                inputs = described
            } catch {
                runs.append(.failed(FailedRunDocument(computeUnits: units, error: String(describing: error))))
            }
        }
        let model = ModelDocument(file: modelURL.lastPathComponent, compileMs: compileMs, inputs: inputs)
        return ResultDocument(device: DeviceProbe.device(), model: model, config: config, runs: runs)
    }

    func measure(compiledURL: URL, units: ComputeUnits) async throws -> (MeasuredRunDocument, [InputDocument]) {
        let clock = ContinuousClock()
        let configuration = MLModelConfiguration()
        configuration.computeUnits = units.mlComputeUnits
        let thermalStart = DeviceProbe.thermalState()
        var memory = FootprintSampler()
        memory.sample()

        let loadStart = clock.now
        let model = try MLModel(contentsOf: compiledURL, configuration: configuration)
        let loadMs = milliseconds(clock.now - loadStart)
        memory.sample()

        let (features, described) = try SyntheticInputs.make(for: model.modelDescription, seed: config.seed)
        let firstStart = clock.now
        _ = try model.prediction(from: features)
        let firstMs = milliseconds(clock.now - firstStart)
        memory.sample()

        let warmup = config.warmup.untimedIterations
        for _ in 0..<warmup {
            _ = try model.prediction(from: features)
        }

        var latencies: [Double] = []
        latencies.reserveCapacity(config.minIters)
        let minimum = Duration.seconds(config.minSeconds)
        let started = clock.now
        let deadline = started + Duration.seconds(config.timeoutS)
        var stopReason = "reached"
        while true {
            let before = clock.now
            _ = try model.prediction(from: features)
            let after = clock.now
            latencies.append(milliseconds(after - before))
            if latencies.count % 10 == 0 {
                memory.sample()
            }
            if latencies.count >= config.minIters && after - started >= minimum {
                break
            }
            if latencies.count >= config.maxIters {
                stopReason = "max_iters"
                break
            }
            if after >= deadline {
                stopReason = "timeout"
                break
            }
        }
        memory.sample()
        let plan = await ComputePlanReport.make(compiledURL: compiledURL, configuration: configuration)
        let run = MeasuredRunDocument(
            computeUnits: units,
            loadMs: loadMs,
            firstInferenceMs: firstMs,
            warmupIterations: warmup,
            latenciesMs: latencies,
            stopReason: stopReason,
            memory: memory.document,
            thermalStateStart: thermalStart,
            thermalStateEnd: DeviceProbe.thermalState(),
            computePlan: plan
        )
        return (run, described)
    }
}

func milliseconds(_ duration: Duration) -> Double {
    let parts = duration.components
    return Double(parts.seconds) * 1_000 + Double(parts.attoseconds) / 1_000_000_000_000_000
}
