import Darwin
import Foundation

/// Device facts, the process's physical memory footprint and the thermal state.
public enum DeviceProbe {
    public static func device() -> DeviceDocument {
        var system = utsname()
        uname(&system)
        let machine = withUnsafeBytes(of: &system.machine) { raw in
            String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
        }
        #if targetEnvironment(simulator)
        let identifier = ProcessInfo.processInfo.environment["SIMULATOR_MODEL_IDENTIFIER"] ?? machine
        let simulator = true
        #else
        let identifier = machine
        let simulator = false
        #endif
        #if os(iOS)
        let systemName = "iOS"
        #elseif os(macOS)
        let systemName = "macOS"
        #else
        let systemName = "other"
        #endif
        let info = ProcessInfo.processInfo
        let version = info.operatingSystemVersion
        return DeviceDocument(
            modelIdentifier: identifier,
            systemName: systemName,
            systemVersion: "\(version.majorVersion).\(version.minorVersion).\(version.patchVersion)",
            isSimulator: simulator,
            processorCount: info.processorCount,
            physicalMemoryMB: Double(info.physicalMemory) / 1_048_576,
            lowPowerMode: info.isLowPowerModeEnabled
        )
    }

    /// The thermal state as the schema names it.
    public static func thermalState() -> String {
        switch ProcessInfo.processInfo.thermalState {
        case .nominal: return "nominal"
        case .fair: return "fair"
        case .serious: return "serious"
        case .critical: return "critical"
        @unknown default: return "unknown"
        }
    }

    /// `task_vm_info.phys_footprint` in MiB: what Xcode's memory gauge and XCTMemoryMetric report, and
    /// what iOS's memory limit is enforced against. `nil` when task_info fails.
    public static func physFootprintMB() -> Double? {
        var info = task_vm_info_data_t()
        var count = mach_msg_type_number_t(MemoryLayout<task_vm_info_data_t>.size / MemoryLayout<integer_t>.size)
        let status = withUnsafeMutablePointer(to: &info) { pointer in
            pointer.withMemoryRebound(to: integer_t.self, capacity: Int(count)) { raw in
                task_info(mach_task_self_, task_flavor_t(TASK_VM_INFO), raw, &count)
            }
        }
        guard status == KERN_SUCCESS else { return nil }
        return Double(info.phys_footprint) / 1_048_576
    }
}

/// Largest footprint seen at the sampling points of one run.
struct FootprintSampler {
    private(set) var peakMB: Double = 0
    private(set) var failed = false

    mutating func sample() {
        guard let now = DeviceProbe.physFootprintMB() else {
            failed = true
            return
        }
        peakMB = max(peakMB, now)
    }

    var document: MemoryDocument {
        if failed || peakMB <= 0 {
            return .unavailable(reason: "task_info(TASK_VM_INFO) failed on this device")
        }
        return .measured(
            peakMB: peakMB,
            method: "peak task_vm_info.phys_footprint of the test process, sampled after load, after the first inference and every 10 timed iterations (outside the timed region)"
        )
    }
}
