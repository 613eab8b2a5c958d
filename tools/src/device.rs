//! `--device cpu|wgpu|cuda`: where a command computes. The GPU devices need
//! a build with the `gpu` feature (`cuda` for CUDA); opening one checks that
//! the device exists and turns its absence into an error.
//!
//! On a GPU: `qmul train` (each epoch's evaluation and checkpoint on the
//! CPU), `qmul eval` (the forward of every figure), `qmul bench` (the whole
//! network's training step and inference), and the training of `qmul
//! unlearn`, `qmul demo` and `qmul experiment` (the session's evaluation and
//! deletion check stay on the CPU; an experiment caches GPU-trained models
//! apart and records the device in its report's setting).

pub use qmul_runtime::device::Device;

/// The device names `--device` takes.
pub const NAMES: [&str; 3] = ["cpu", "wgpu", "cuda"];

/// Opens the device `name` (one of [`NAMES`]).
pub fn open(name: &str) -> Result<Device, String> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "wgpu" | "cuda" => open_gpu(name),
        other => Err(format!("unknown device {other:?} (cpu, wgpu or cuda)")),
    }
}

static OPENED: std::sync::OnceLock<Device> = std::sync::OnceLock::new();

/// The device `--device` selected, opened once per process.
pub fn current() -> Result<Device, String> {
    if let Some(d) = OPENED.get() {
        return Ok(d.clone());
    }
    let d = open(selected())?;
    Ok(OPENED.get_or_init(|| d).clone())
}

#[cfg(feature = "gpu")]
fn open_gpu(name: &str) -> Result<Device, String> {
    use qmul_kernels::gpu::{Backend, Gpu};
    let backend = Backend::parse(name).ok_or_else(|| format!("unknown GPU backend {name:?}"))?;
    Gpu::open(backend)
        .map(|g| Device::Gpu(std::sync::Arc::new(g)))
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
