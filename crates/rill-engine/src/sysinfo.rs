//! What rill sees of the machine (CPU features, cores, memory) and the defaults derived from it.

use serde::Serialize;

use crate::quant::Kernels;

/// The machine as `rill info` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct MachineInfo {
    /// The CPU's model name (the architecture if unknown).
    pub cpu_model: String,
    /// The SIMD features rill's kernels care about that the CPU has.
    pub cpu_features: Vec<&'static str>,
    /// Hardware threads available to the process.
    pub logical_cores: usize,
    /// Physical cores available to the process.
    pub physical_cores: usize,
    /// Installed memory (0 if unknown).
    pub memory_total_bytes: u64,
    /// Memory available now (0 if unknown).
    pub memory_available_bytes: u64,
    /// The kernel tier [`Kernels::detect`] picks.
    pub kernel_tier: String,
    /// Always None: rill runs on the CPU.
    pub gpu: Option<String>,
}

/// Reads the machine (`/proc` on Linux).
pub fn machine_info() -> MachineInfo {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let mut cpu_features = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! feat {
            ($($f:tt),*) => {$(
                if std::is_x86_feature_detected!($f) { cpu_features.push($f); }
            )*};
        }
        feat!(
            "sse4.2",
            "avx",
            "avx2",
            "fma",
            "f16c",
            "avx512f",
            "avx512bw",
            "avx512vl",
            "avx512vnni",
            "avx512bf16"
        );
    }
    #[cfg(target_arch = "aarch64")]
    {
        if std::arch::is_aarch64_feature_detected!("neon") {
            cpu_features.push("neon");
        }
        if std::arch::is_aarch64_feature_detected!("dotprod") {
            cpu_features.push("dotprod");
        }
    }
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem = |key: &str| {
        meminfo
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    MachineInfo {
        cpu_model,
        cpu_features,
        logical_cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        physical_cores: physical_cores(),
        memory_total_bytes: mem("MemTotal:"),
        memory_available_bytes: mem("MemAvailable:"),
        kernel_tier: Kernels::detect().tier().to_string(),
        gpu: None,
    }
}

/// Physical cores available to this process: distinct (package, core) pairs in /proc/cpuinfo,
/// capped by the affinity mask; falls back to the logical count.
pub fn physical_cores() -> usize {
    let logical = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let mut pairs = std::collections::HashSet::new();
    let (mut phys, mut core) = (None, None);
    for line in cpuinfo.lines() {
        let val = || line.split(':').nth(1).map(|s| s.trim().to_string());
        if line.starts_with("physical id") {
            phys = val();
        } else if line.starts_with("core id") {
            core = val();
        } else if line.trim().is_empty() {
            if let (Some(p), Some(c)) = (phys.take(), core.take()) {
                pairs.insert((p, c));
            }
        }
    }
    if pairs.is_empty() {
        logical
    } else {
        pairs.len().min(logical).max(1)
    }
}
