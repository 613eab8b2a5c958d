//! The device the GPU tests run on, shared by the kernels' harness and the
//! runtime's `gpu_ops`: `QMUL_GPU_BACKEND` (wgpu or cuda; default wgpu).
//! Without one the tests print why and pass, unless `QMUL_GPU_REQUIRED=1`
//! (`.ci/run`, `benches/gpu/run.sh`), where a missing device is a failure.

use qmul_kernels::gpu::{Backend, Gpu};

/// The device to test, or `None` (printed) when there is none.
pub fn gpu() -> Option<Gpu> {
    let backend = match std::env::var("QMUL_GPU_BACKEND") {
        Ok(s) => Backend::parse(&s).unwrap_or_else(|| panic!("QMUL_GPU_BACKEND={s}: wgpu or cuda")),
        Err(_) => Backend::Wgpu,
    };
    match Gpu::open(backend) {
        Ok(g) => {
            eprintln!("GPU: {}", g.name());
            Some(g)
        }
        Err(e) if std::env::var("QMUL_GPU_REQUIRED").as_deref() == Ok("1") => {
            panic!("QMUL_GPU_REQUIRED=1 but no GPU: {e}")
        }
        Err(e) => {
            eprintln!("SKIPPED: no GPU to test on ({e})");
            None
        }
    }
}
