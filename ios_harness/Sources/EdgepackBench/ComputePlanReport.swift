import CoreML
import Foundation

/// Which device Core ML plans for each ML Program operation (MLComputePlan, iOS 17.4 / macOS 14.4).
public enum ComputePlanReport {
    public static func make(compiledURL: URL, configuration: MLModelConfiguration) async -> ComputePlanDocument {
        guard #available(iOS 17.4, macOS 14.4, *) else {
            let version = ProcessInfo.processInfo.operatingSystemVersionString
            return .unavailable(reason: "MLComputePlan needs iOS 17.4 or macOS 14.4; this device runs \(version)")
        }
        return await load(compiledURL: compiledURL, configuration: configuration)
    }

    @available(iOS 17.4, macOS 14.4, *)
    static func load(compiledURL: URL, configuration: MLModelConfiguration) async -> ComputePlanDocument {
        let plan: MLComputePlan
        do {
            plan = try await MLComputePlan.load(contentsOf: compiledURL, configuration: configuration)
        } catch {
            return .unavailable(reason: "MLComputePlan.load failed: \(error.localizedDescription)")
        }
        guard case let .program(program) = plan.modelStructure else {
            return .unavailable(reason: "the model is not an ML Program (per-op compute plans are recorded for mlprogram only)")
        }
        var operations: [OperationDocument] = []
        for name in program.functions.keys.sorted() {
            guard let function = program.functions[name] else { continue }
            collect(function.block, plan: plan, into: &operations)
        }
        return .available(operations: operations)
    }

    @available(iOS 17.4, macOS 14.4, *)
    static func collect(_ block: MLModelStructure.Program.Block, plan: MLComputePlan, into operations: inout [OperationDocument]) {
        for operation in block.operations {
            for inner in operation.blocks {
                collect(inner, plan: plan, into: &operations)
            }
            // Constants and other ops that never execute have no device usage.
            guard let usage = plan.deviceUsage(for: operation) else { continue }
            operations.append(OperationDocument(
                operatorName: operation.operatorName,
                preferred: deviceName(usage.preferred),
                supported: usage.supported.map(deviceName),
                cost: plan.estimatedCost(of: operation)?.weight
            ))
        }
    }

    @available(iOS 17.4, macOS 14.4, *)
    static func deviceName(_ device: MLComputeDevice) -> String {
        switch device {
        case .cpu: return "cpu"
        case .gpu: return "gpu"
        case .neuralEngine: return "neuralEngine"
        @unknown default: return "unknown"
        }
    }
}
