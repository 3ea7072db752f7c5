import CoreML
import Foundation

/// The Core ML compute-unit settings the bench can run a model under (names as in `MLComputeUnits`).
public enum ComputeUnits: String, Codable, CaseIterable, Sendable {
    case all
    case cpuAndNeuralEngine
    case cpuOnly
    case cpuAndGPU

    public var mlComputeUnits: MLComputeUnits {
        switch self {
        case .all: return .all
        case .cpuAndNeuralEngine: return .cpuAndNeuralEngine
        case .cpuOnly: return .cpuOnly
        case .cpuAndGPU: return .cpuAndGPU
        }
    }
}

/// Untimed iterations before measuring, or `auto`: measure from the first iteration and let the driver
/// (edgepack.device_bench.stats.detect_warmup) discard the warm-up it detects.
public enum Warmup: Codable, Equatable, Sendable {
    case fixed(Int)
    case auto

    public init(from decoder: Decoder) throws {
        let container = try decoder.singleValueContainer()
        if let count = try? container.decode(Int.self) {
            guard count >= 0 else {
                throw DecodingError.dataCorruptedError(in: container, debugDescription: "warmup must be >= 0")
            }
            self = .fixed(count)
            return
        }
        let word = try container.decode(String.self)
        guard word == "auto" else {
            throw DecodingError.dataCorruptedError(in: container, debugDescription: "warmup must be a count or \"auto\"")
        }
        self = .auto
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .fixed(let count): try container.encode(count)
        case .auto: try container.encode("auto")
        }
    }

    /// Untimed iterations to run before the timed loop.
    public var untimedIterations: Int {
        switch self {
        case .fixed(let count): return count
        case .auto: return 0
        }
    }
}

/// What the driver asks for (`bench-config.json`, written by edgepack's ios runner). The timed loop stops
/// when it has `minIters` iterations and `minSeconds` of timed inference, or at `maxIters` / `timeoutS`.
public struct BenchConfig: Codable, Equatable, Sendable {
    public var warmup: Warmup
    public var minIters: Int
    public var minSeconds: Double
    public var maxIters: Int
    public var timeoutS: Double
    public var seed: UInt64
    public var computeUnits: [ComputeUnits]

    enum CodingKeys: String, CodingKey {
        case warmup
        case minIters = "min_iters"
        case minSeconds = "min_seconds"
        case maxIters = "max_iters"
        case timeoutS = "timeout_s"
        case seed
        case computeUnits = "compute_units"
    }

    public init(
        warmup: Warmup = .auto,
        minIters: Int = 100,
        minSeconds: Double = 2.0,
        maxIters: Int = 100_000,
        timeoutS: Double = 600,
        seed: UInt64 = 0,
        computeUnits: [ComputeUnits] = [.all, .cpuAndNeuralEngine, .cpuOnly]
    ) {
        self.warmup = warmup
        self.minIters = minIters
        self.minSeconds = minSeconds
        self.maxIters = maxIters
        self.timeoutS = timeoutS
        self.seed = seed
        self.computeUnits = computeUnits
    }

    public init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        warmup = try container.decode(Warmup.self, forKey: .warmup)
        minIters = try container.decode(Int.self, forKey: .minIters)
        minSeconds = try container.decode(Double.self, forKey: .minSeconds)
        maxIters = try container.decode(Int.self, forKey: .maxIters)
        timeoutS = try container.decode(Double.self, forKey: .timeoutS)
        seed = try container.decode(UInt64.self, forKey: .seed)
        computeUnits = try container.decode([ComputeUnits].self, forKey: .computeUnits)
        guard minIters >= 1, maxIters >= minIters, minSeconds >= 0, timeoutS > 0, !computeUnits.isEmpty else {
            throw DecodingError.dataCorrupted(
                .init(codingPath: decoder.codingPath, debugDescription: "bench-config.json: inconsistent limits")
            )
        }
    }

    /// Reads `bench-config.json`.
    public static func load(from url: URL) throws -> BenchConfig {
        try JSONDecoder().decode(BenchConfig.self, from: Data(contentsOf: url))
    }
}
