import CoreML
import CoreVideo
import Foundation

public enum BenchError: Error, CustomStringConvertible {
    case unsupportedInput(name: String, why: String)
    case pixelBuffer(name: String, status: CVReturn)

    public var description: String {
        switch self {
        case let .unsupportedInput(name, why): return "input '\(name)': \(why)"
        case let .pixelBuffer(name, status): return "input '\(name)': CVPixelBufferCreate failed (\(status))"
        }
    }
}

/// Seeded generator (SplitMix64), so every compute-unit setting sees the same inputs.
struct SplitMix64 {
    private var state: UInt64

    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    mutating func unit() -> Float {
        Float(next() >> 40) / Float(1 << 24)
    }
}

/// Random inputs of the right names, shapes and types for a model: multi-arrays and images.
public enum SyntheticInputs {
    public static func make(for description: MLModelDescription, seed: UInt64) throws -> (MLFeatureProvider, [InputDocument]) {
        var rng = SplitMix64(seed: seed)
        var features: [String: MLFeatureValue] = [:]
        var documents: [InputDocument] = []
        for name in description.inputDescriptionsByName.keys.sorted() {
            guard let feature = description.inputDescriptionsByName[name] else { continue }
            switch feature.type {
            case .multiArray:
                guard let constraint = feature.multiArrayConstraint else {
                    throw BenchError.unsupportedInput(name: name, why: "multi-array input without a constraint")
                }
                let array = try MLMultiArray(shape: constraint.shape, dataType: constraint.dataType)
                let integer = constraint.dataType == .int32
                for index in 0..<array.count {
                    array[index] = integer ? NSNumber(value: Int32(rng.next() % 100)) : NSNumber(value: rng.unit())
                }
                features[name] = MLFeatureValue(multiArray: array)
                documents.append(InputDocument(
                    name: name, kind: "multiArray", shape: constraint.shape.map { $0.intValue },
                    dataType: dataTypeName(constraint.dataType)
                ))
            case .image:
                guard let constraint = feature.imageConstraint else {
                    throw BenchError.unsupportedInput(name: name, why: "image input without a constraint")
                }
                let buffer = try pixelBuffer(
                    name: name, width: constraint.pixelsWide, height: constraint.pixelsHigh,
                    format: constraint.pixelFormatType, rng: &rng
                )
                features[name] = MLFeatureValue(pixelBuffer: buffer)
                documents.append(InputDocument(
                    name: name, kind: "image", shape: [constraint.pixelsHigh, constraint.pixelsWide],
                    dataType: fourCC(constraint.pixelFormatType)
                ))
            default:
                throw BenchError.unsupportedInput(name: name, why: "feature type \(feature.type.rawValue) is not generated")
            }
        }
        return (try MLDictionaryFeatureProvider(dictionary: features), documents)
    }

    static func dataTypeName(_ type: MLMultiArrayDataType) -> String {
        switch type {
        case .float32: return "float32"
        case .float16: return "float16"
        case .double: return "float64"
        case .int32: return "int32"
        @unknown default: return "other(\(type.rawValue))"
        }
    }

    static func fourCC(_ code: OSType) -> String {
        let bytes = [24, 16, 8, 0].map { UInt8((code >> $0) & 0xFF) }
        return String(decoding: bytes, as: UTF8.self)
    }

    static func pixelBuffer(name: String, width: Int, height: Int, format: OSType, rng: inout SplitMix64) throws -> CVPixelBuffer {
        var buffer: CVPixelBuffer?
        let attributes = [kCVPixelBufferIOSurfacePropertiesKey as String: [String: Any]()] as CFDictionary
        let status = CVPixelBufferCreate(kCFAllocatorDefault, width, height, format, attributes, &buffer)
        guard status == kCVReturnSuccess, let created = buffer else {
            throw BenchError.pixelBuffer(name: name, status: status)
        }
        CVPixelBufferLockBaseAddress(created, [])
        if let base = CVPixelBufferGetBaseAddress(created) {
            let count = CVPixelBufferGetBytesPerRow(created) * height
            let bytes = base.assumingMemoryBound(to: UInt8.self)
            for index in 0..<count {
                bytes[index] = UInt8(truncatingIfNeeded: rng.next())
            }
        }
        CVPixelBufferUnlockBaseAddress(created, [])
        return created
    }
}
