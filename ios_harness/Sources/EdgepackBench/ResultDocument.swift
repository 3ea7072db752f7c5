import Foundation

// The JSON attachment, field for field as ../../result.schema.json defines it (snake_case keys).

/// The one document the bench attaches to the test result.
public struct ResultDocument: Encodable, Sendable {
    /// Attachment name; XCTest appends `_<index>_<UUID>` before the extension in the exported file name.
    public static let attachmentName = "edgepack-bench-result.json"
    public static let harnessVersion = "0.1.0"

    public let schemaVersion: Int
    public let harness: Harness
    public let device: DeviceDocument
    public let model: ModelDocument
    public let config: BenchConfig
    public let runs: [RunDocument]

    enum CodingKeys: String, CodingKey {
        case schemaVersion = "schema_version"
        case harness, device, model, config, runs
    }

    public init(device: DeviceDocument, model: ModelDocument, config: BenchConfig, runs: [RunDocument]) {
        self.schemaVersion = 1
        self.harness = Harness(name: "edgepack-ios-bench", version: Self.harnessVersion)
        self.device = device
        self.model = model
        self.config = config
        self.runs = runs
    }

    public func jsonData() throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return try encoder.encode(self)
    }
}

public struct Harness: Encodable, Sendable {
    public let name: String
    public let version: String
}

public struct DeviceDocument: Encodable, Sendable {
    public let modelIdentifier: String
    public let systemName: String
    public let systemVersion: String
    public let isSimulator: Bool
    public let processorCount: Int
    public let physicalMemoryMB: Double
    public let lowPowerMode: Bool

    enum CodingKeys: String, CodingKey {
        case modelIdentifier = "model_identifier"
        case systemName = "system_name"
        case systemVersion = "system_version"
        case isSimulator = "is_simulator"
        case processorCount = "processor_count"
        case physicalMemoryMB = "physical_memory_mb"
        case lowPowerMode = "low_power_mode"
    }
}

public struct InputDocument: Encodable, Sendable {
    public let name: String
    public let kind: String
    public let shape: [Int]
    public let dataType: String

    enum CodingKeys: String, CodingKey {
        case name, kind, shape
        case dataType = "data_type"
    }
}

public struct ModelDocument: Encodable, Sendable {
    public let file: String
    public let compileMs: Double
    public let inputs: [InputDocument]

    enum CodingKeys: String, CodingKey {
        case file
        case compileMs = "compile_ms"
        case inputs
    }
}

/// Peak physical footprint sampled during one run, or why it could not be read.
public enum MemoryDocument: Encodable, Sendable {
    case measured(peakMB: Double, method: String)
    case unavailable(reason: String)

    enum CodingKeys: String, CodingKey {
        case peak = "peak_phys_footprint_mb"
        case method, reason
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        switch self {
        case let .measured(peakMB, method):
            try container.encode(peakMB, forKey: .peak)
            try container.encode(method, forKey: .method)
        case let .unavailable(reason):
            try container.encode(reason, forKey: .reason)
        }
    }
}

public struct OperationDocument: Encodable, Sendable {
    public let operatorName: String
    public let preferred: String
    public let supported: [String]
    public let cost: Double?

    enum CodingKeys: String, CodingKey {
        case operatorName = "operator"
        case preferred, supported, cost
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(operatorName, forKey: .operatorName)
        try container.encode(preferred, forKey: .preferred)
        try container.encode(supported, forKey: .supported)
        try container.encode(cost, forKey: .cost)  // null when Core ML gives no estimate
    }
}

/// MLComputePlan's per-operation device (iOS 17.4+), or why there is none.
public enum ComputePlanDocument: Encodable, Sendable {
    case available(operations: [OperationDocument])
    case unavailable(reason: String)

    enum CodingKeys: String, CodingKey {
        case available, operations, reason
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        switch self {
        case let .available(operations):
            try container.encode(true, forKey: .available)
            try container.encode(operations, forKey: .operations)
        case let .unavailable(reason):
            try container.encode(false, forKey: .available)
            try container.encode(reason, forKey: .reason)
        }
    }
}

public struct MeasuredRunDocument: Encodable, Sendable {
    public let computeUnits: ComputeUnits
    public let loadMs: Double
    public let firstInferenceMs: Double
    public let warmupIterations: Int
    public let latenciesMs: [Double]
    public let stopReason: String
    public let memory: MemoryDocument
    public let thermalStateStart: String
    public let thermalStateEnd: String
    public let computePlan: ComputePlanDocument

    enum CodingKeys: String, CodingKey {
        case computeUnits = "compute_units"
        case loadMs = "load_ms"
        case firstInferenceMs = "first_inference_ms"
        case warmupIterations = "warmup_iterations"
        case latenciesMs = "latencies_ms"
        case stopReason = "stop_reason"
        case memory
        case thermalStateStart = "thermal_state_start"
        case thermalStateEnd = "thermal_state_end"
        case computePlan = "compute_plan"
    }
}

public struct FailedRunDocument: Encodable, Sendable {
    public let computeUnits: ComputeUnits
    public let error: String

    enum CodingKeys: String, CodingKey {
        case computeUnits = "compute_units"
        case error
    }
}

/// One compute-unit setting: measured, or the error that stopped it (the other settings still run).
public enum RunDocument: Encodable, Sendable {
    case measured(MeasuredRunDocument)
    case failed(FailedRunDocument)

    public var isMeasured: Bool {
        if case .measured = self { return true }
        return false
    }

    public func encode(to encoder: Encoder) throws {
        switch self {
        case let .measured(run): try run.encode(to: encoder)
        case let .failed(run): try run.encode(to: encoder)
        }
    }
}
