//! What this machine offers the coordinator: GPUs (from nvidia-smi), CPUs, the libtorch and CUDA
//! versions, and the job slots the daemon makes from them.
//!
//! nvidia-smi is asked rather than CUDA itself because the daemon never initialises CUDA: only
//! the job children do, each after dlopening libtorch_cuda.so (see `engine::init_device`), so a
//! driver problem fails a job, not the daemon.

use anyhow::{bail, Context};
use lth_proto::v1::GpuInfo;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The registration facts of this machine.
#[derive(Debug, Clone)]
pub struct Inventory {
    pub host: String,
    pub gpus: Vec<GpuInfo>,
    pub cpus: u32,
    pub libtorch_version: String,
    pub cuda_version: String,
}

/// One place a job can run: a GPU (by its nvidia-smi index) or the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub id: usize,
    pub gpu: Option<u32>,
}

pub fn detect() -> Inventory {
    let gpus = query_gpus().unwrap_or_default();
    let cuda_version = if gpus.is_empty() { String::new() } else { query_cuda_version().unwrap_or_default() };
    Inventory {
        host: hostname(),
        gpus,
        cpus: std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1),
        libtorch_version: libtorch_version().unwrap_or_else(|| "unknown".to_string()),
        cuda_version,
    }
}

/// Which CPU kernels libtorch runs on this machine, for the start-up log: results on CPU are bit
/// for bit the same only between machines that run the same kernels (ENGINE.md, "Same numbers on
/// every node"). `ATEN_CPU_CAPABILITY` when set (libtorch's own override, inherited by the job
/// processes); else what this CPU offers libtorch's dispatch (AVX-512 VL/BW/DQ with FMA, or AVX2
/// with FMA, or neither).
pub fn cpu_kernels() -> String {
    if let Some(v) = std::env::var("ATEN_CPU_CAPABILITY").ok().filter(|v| !v.trim().is_empty()) {
        return format!("{} (ATEN_CPU_CAPABILITY)", v.trim());
    }
    #[cfg(target_arch = "x86_64")]
    {
        let fma = std::arch::is_x86_feature_detected!("fma");
        if fma
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512dq")
        {
            return "avx512 (this CPU's best; pin with ATEN_CPU_CAPABILITY=avx2 on a mixed fleet)".into();
        }
        if fma && std::arch::is_x86_feature_detected!("avx2") {
            return "avx2 (this CPU's best)".into();
        }
    }
    "default (this CPU's best)".into()
}

pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        if let Ok(s) = std::str::from_utf8(&buf[..end]) {
            if !s.is_empty() {
                return s.to_string();
            }
        }
    }
    "localhost".to_string()
}

/// GPUs as nvidia-smi lists them; `None` when nvidia-smi is absent or fails (a CPU machine).
fn query_gpus() -> Option<Vec<GpuInfo>> {
    let out = Command::new("nvidia-smi")
        .args(["--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    Some(parse_gpu_csv(&String::from_utf8_lossy(&out.stdout)))
}

/// Parses `index, name, memory.total[MiB]` lines.
pub fn parse_gpu_csv(text: &str) -> Vec<GpuInfo> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            if fields.len() < 3 {
                return None;
            }
            let index = fields[0].parse().ok()?;
            let mib: u64 = fields[fields.len() - 1].parse().ok()?;
            let name = fields[1..fields.len() - 1].join(",");
            Some(GpuInfo { index, name, memory_bytes: mib * 1024 * 1024 })
        })
        .collect()
}

/// The CUDA version the driver supports, from nvidia-smi's banner ("CUDA Version: 13.0").
fn query_cuda_version() -> Option<String> {
    let out = Command::new("nvidia-smi").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let at = text.find("CUDA Version:")?;
    let rest = text[at + "CUDA Version:".len()..].trim_start();
    let version: String = rest.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    (!version.is_empty()).then_some(version)
}

/// The libtorch this process runs on: found through the loaded libtorch_cpu.so (its folder's
/// `../build-version`, written by scripts/fetch-libtorch.sh, or a torch install's `../version.py`).
fn libtorch_version() -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let lib = maps.lines().filter_map(|l| l.split_whitespace().nth(5)).find(|p| p.contains("libtorch_cpu.so"))?;
    let dir = Path::new(lib).parent()?.parent()?;
    if let Ok(v) = std::fs::read_to_string(dir.join("build-version")) {
        return Some(v.trim().to_string());
    }
    let py = std::fs::read_to_string(dir.join("version.py")).ok()?;
    let line = py.lines().find(|l| l.starts_with("__version__"))?;
    Some(line.split(['\'', '"']).nth(1)?.to_string())
}

/// Which GPUs `--gpus` selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuSelection {
    All,
    None,
    List(Vec<u32>),
}

impl std::str::FromStr for GpuSelection {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s.trim() {
            "all" | "" => Ok(GpuSelection::All),
            "none" | "cpu" => Ok(GpuSelection::None),
            list => {
                let mut ids = Vec::new();
                for part in list.split(',') {
                    let id = part.trim().parse::<u32>().with_context(|| {
                        format!("--gpus {s:?}: write `all`, `none` or comma-separated GPU indices such as `0,1`")
                    })?;
                    ids.push(id);
                }
                Ok(GpuSelection::List(ids))
            }
        }
    }
}

/// The daemon's slots: `slots_per_gpu` per selected GPU, plus `cpu_slots` CPU slots (default: one
/// when no GPU slot exists, else none).
pub fn plan_slots(
    gpus: &[GpuInfo],
    selection: &GpuSelection,
    slots_per_gpu: u32,
    cpu_slots: Option<u32>,
) -> anyhow::Result<Vec<Slot>> {
    let chosen: Vec<u32> = match selection {
        GpuSelection::All => gpus.iter().map(|g| g.index).collect(),
        GpuSelection::None => Vec::new(),
        GpuSelection::List(ids) => {
            for id in ids {
                if !gpus.iter().any(|g| g.index == *id) {
                    let have: Vec<String> = gpus.iter().map(|g| g.index.to_string()).collect();
                    bail!(
                        "--gpus asks for GPU {id}, but nvidia-smi lists {}; pass indices from that list, `all`, or `none`",
                        if have.is_empty() { "no GPU".to_string() } else { have.join(", ") }
                    );
                }
            }
            ids.clone()
        }
    };
    if !chosen.is_empty() && slots_per_gpu == 0 {
        bail!("--slots-per-gpu must be at least 1 (or pass --gpus none for a CPU-only worker)");
    }
    let mut slots = Vec::new();
    for gpu in &chosen {
        for _ in 0..slots_per_gpu {
            slots.push(Slot { id: slots.len(), gpu: Some(*gpu) });
        }
    }
    let cpu = cpu_slots.unwrap_or(if slots.is_empty() { 1 } else { 0 });
    for _ in 0..cpu {
        slots.push(Slot { id: slots.len(), gpu: None });
    }
    if slots.is_empty() {
        bail!("this worker has no job slots: pass --cpu-slots 1 or select a GPU with --gpus");
    }
    Ok(slots)
}

/// Default worker id: stable across restarts of the same daemon on the same host and GPU set.
pub fn default_worker_id(host: &str, slots: &[Slot]) -> String {
    let mut gpus: Vec<u32> = slots.iter().filter_map(|s| s.gpu).collect();
    gpus.dedup();
    if gpus.is_empty() {
        format!("{host}-cpu")
    } else {
        format!("{host}-gpu{}", gpus.iter().map(u32::to_string).collect::<Vec<_>>().join("_"))
    }
}

/// Default cache folder: $XDG_CACHE_HOME/lth-worker, ~/.cache/lth-worker, or ./.lth/worker.
pub fn default_cache_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("lth-worker");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(h).join(".cache").join("lth-worker");
    }
    PathBuf::from(".lth").join("worker")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(index: u32) -> GpuInfo {
        GpuInfo { index, name: "NVIDIA H100".into(), memory_bytes: 80 << 30 }
    }

    #[test]
    fn parses_nvidia_smi_csv() {
        let g = parse_gpu_csv("0, NVIDIA H100 80GB HBM3, 81559\n1, NVIDIA H200, 143771\n\n");
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].index, 0);
        assert_eq!(g[0].name, "NVIDIA H100 80GB HBM3");
        assert_eq!(g[0].memory_bytes, 81559 * 1024 * 1024);
        assert_eq!(g[1].index, 1);
    }

    #[test]
    fn slots_per_gpu_and_cpu_fallback() {
        let gpus = [gpu(0), gpu(1)];
        let s = plan_slots(&gpus, &GpuSelection::All, 2, None).unwrap();
        assert_eq!(s.iter().map(|s| s.gpu).collect::<Vec<_>>(), vec![Some(0), Some(0), Some(1), Some(1)]);
        let s = plan_slots(&gpus, &"1".parse().unwrap(), 1, Some(1)).unwrap();
        assert_eq!(s.iter().map(|s| s.gpu).collect::<Vec<_>>(), vec![Some(1), None]);
        let s = plan_slots(&[], &GpuSelection::All, 1, None).unwrap();
        assert_eq!(s, vec![Slot { id: 0, gpu: None }]);
        let err = plan_slots(&gpus, &"3".parse().unwrap(), 1, None).unwrap_err().to_string();
        assert!(err.contains("GPU 3") && err.contains("0, 1"), "{err}");
        assert!(plan_slots(&[], &GpuSelection::None, 1, Some(0)).is_err());
        assert!("0,x".parse::<GpuSelection>().is_err());
        assert_eq!(default_worker_id("h", &plan_slots(&gpus, &GpuSelection::All, 2, None).unwrap()), "h-gpu0_1");
    }
}
