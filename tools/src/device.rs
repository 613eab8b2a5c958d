//! `--device cpu|wgpu|cuda`: where a command computes. The GPU devices need
//! a build with the `gpu` feature (`cuda` for CUDA); opening one checks that
//! the device exists and turns its absence into an error.
//!
//! So far the GPU runs the eval forward (`qmul eval`: test accuracy, and FA,
//! RA, TA and MIA with `--forget`); the commands that train or unlearn
//! refuse a GPU device with a message saying so, rather than silently
//! running on the CPU.

/// A device a command runs on.
pub enum Device {
    Cpu,
    #[cfg(feature = "gpu")]
    Gpu(qmul_kernels::gpu::Gpu),
}

/// The device names `--device` takes.
pub const NAMES: [&str; 3] = ["cpu", "wgpu", "cuda"];

impl Device {
    /// Opens the device `name` (one of [`NAMES`]).
    pub fn open(name: &str) -> Result<Device, String> {
        match name {
            "cpu" => Ok(Device::Cpu),
            "wgpu" | "cuda" => open_gpu(name),
            other => Err(format!("unknown device {other:?} (cpu, wgpu or cuda)")),
        }
    }

    /// How the device describes itself.
    pub fn name(&self) -> String {
        match self {
            Device::Cpu => format!("cpu ({} kernels)", qmul_kernels::active().name),
            #[cfg(feature = "gpu")]
            Device::Gpu(g) => g.name().to_string(),
        }
    }
}

#[cfg(feature = "gpu")]
fn open_gpu(name: &str) -> Result<Device, String> {
    use qmul_kernels::gpu::{Backend, Gpu};
    let backend = Backend::parse(name).ok_or_else(|| format!("unknown GPU backend {name:?}"))?;
    Gpu::open(backend)
        .map(Device::Gpu)
        .map_err(|e| format!("--device {name}: {e}"))
}

#[cfg(not(feature = "gpu"))]
fn open_gpu(name: &str) -> Result<Device, String> {
    Err(format!(
        "--device {name}: this qmul was built without GPU support; build it with \
         `cargo build --release --features gpu` (wgpu: Vulkan, Metal, DX12) or \
         `--features cuda`"
    ))
}

static SELECTED: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Records the global `--device` (once, from `main`).
pub fn select(name: &str) {
    let _ = SELECTED.set(name.to_string());
}

/// The device `--device` named (default: cpu).
pub fn selected() -> &'static str {
    SELECTED.get().map_or("cpu", String::as_str)
}

/// An error unless the selected device is the CPU: for commands whose work
/// does not run on a GPU yet.
pub fn require_cpu(command: &str) -> Result<(), String> {
    match selected() {
        "cpu" => Ok(()),
        d => Err(format!(
            "--device {d}: `qmul {command}` runs on the CPU only so far; the GPU path \
             runs the eval forward (`qmul eval --device {d}`)"
        )),
    }
}
