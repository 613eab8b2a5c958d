//! GPU kernels (feature `gpu`: cubecl on wgpu, which reaches Vulkan, Metal and
//! DX12 devices and, in CI, Mesa's software Vulkan device lavapipe; feature
//! `cuda`: also cubecl's CUDA runtime). The CPU kernels stay the reference:
//! every GPU kernel is tested against [`crate::cpu::scalar`] on random
//! inputs (`tests/gpu_harness.rs`), integer GEMMs bit for bit.
//!
//! Opening a device never panics: a machine without a Vulkan adapter or
//! without the CUDA driver gets a [`GpuError`] that says so (cubecl itself
//! would panic on a device thread, where the caller cannot catch it).

pub mod qgemm;
pub mod sgemm;

pub use qgemm::Tile;

use crate::{BMat, QGemm, SGemm};
use cubecl::prelude::*;
use cubecl::wgpu::{WgpuDevice, WgpuRuntime};

/// Which cubecl runtime a [`Gpu`] runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Wgpu,
    Cuda,
}

impl Backend {
    pub fn parse(s: &str) -> Option<Backend> {
        match s {
            "wgpu" => Some(Backend::Wgpu),
            "cuda" => Some(Backend::Cuda),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Backend::Wgpu => "wgpu",
            Backend::Cuda => "cuda",
        }
    }
}

/// A GPU that could not be opened or a kernel that could not run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuError(pub String);

impl std::fmt::Display for GpuError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for GpuError {}

enum Client {
    Wgpu(ComputeClient<WgpuRuntime>),
    #[cfg(feature = "cuda")]
    Cuda(ComputeClient<cubecl::cuda::CudaRuntime>),
}

/// An open GPU: a cubecl client on one device.
pub struct Gpu {
    client: Client,
    name: String,
}

impl Gpu {
    /// Opens the default device of `backend`, checking first that one exists.
    pub fn open(backend: Backend) -> Result<Gpu, GpuError> {
        match backend {
            Backend::Wgpu => {
                let adapters = cubecl::future::block_on(
                    wgpu::Instance::default().enumerate_adapters(wgpu::Backends::all()),
                );
                let Some(first) = adapters.first() else {
                    return Err(GpuError(
                        "no wgpu adapter (no Vulkan, Metal or DX12 device; on Debian, \
                         `apt-get install mesa-vulkan-drivers` gives the software device lavapipe)"
                            .into(),
                    ));
                };
                let info = first.get_info();
                let client = caught(|| WgpuRuntime::client(&WgpuDevice::default()))?;
                Ok(Gpu {
                    client: Client::Wgpu(client),
                    name: format!(
                        "wgpu: {} ({:?}, {:?})",
                        info.name, info.device_type, info.backend
                    ),
                })
            }
            Backend::Cuda => open_cuda(),
        }
    }

    /// The device, as the runtime describes it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// [`crate::qgemm_u4s4`] (`bits` 4) or [`crate::qgemm_u8s8`] (`bits` 8)
    /// on the GPU, with the same operands, checks and result: `c` is
    /// uploaded, every `C[i][j]` of the call written, and `c` read back.
    /// Only `accumulate: false` (the convolutions' use).
    pub fn qgemm(&self, p: &QGemm, bits: u32, tile: Tile, c: &mut [f32]) -> Result<(), GpuError> {
        p.check(c.len()).map_err(|e| GpuError(e.to_string()))?;
        if bits != 4 && bits != 8 {
            return Err(GpuError(format!("qgemm: {bits}-bit codes (4 or 8)")));
        }
        if p.accumulate {
            return Err(GpuError(
                "qgemm on the GPU: accumulate is not supported".into(),
            ));
        }
        if !tile.valid() {
            return Err(GpuError(format!("qgemm: invalid tile {tile:?}")));
        }
        if p.m == 0 || p.n == 0 {
            return Ok(());
        }
        match &self.client {
            Client::Wgpu(cl) => caught(|| qgemm_on(cl, p, bits, tile, c))?,
            #[cfg(feature = "cuda")]
            Client::Cuda(cl) => caught(|| qgemm_on(cl, p, bits, tile, c))?,
        }
    }
}

impl Gpu {
    /// [`crate::sgemm`] on the GPU (`B` f32 or codes, widened as loaded),
    /// with the same operands, checks and result within float rounding:
    /// `c` is uploaded, every `C[i][j]` of the call written, and `c` read
    /// back. `tile.kw` is the reduction steps per shared-memory block.
    pub fn sgemm(&self, p: &SGemm, tile: Tile, c: &mut [f32]) -> Result<(), GpuError> {
        p.check(c.len()).map_err(|e| GpuError(e.to_string()))?;
        if !tile.valid() {
            return Err(GpuError(format!("sgemm: invalid tile {tile:?}")));
        }
        if p.m == 0 || p.n == 0 {
            return Ok(());
        }
        if p.k == 0 {
            // Nothing to multiply: C = beta C, as the reference writes it.
            return crate::cpu::scalar::sgemm(p, c).map_err(|e| GpuError(e.to_string()));
        }
        match &self.client {
            Client::Wgpu(cl) => caught(|| sgemm_on(cl, p, tile, c))?,
            #[cfg(feature = "cuda")]
            Client::Cuda(cl) => caught(|| sgemm_on(cl, p, tile, c))?,
        }
    }
}

/// Bytes padded to whole `u32` words (the kernels read `u32` arrays).
fn words_of(bytes: &[u8]) -> Vec<u8> {
    let mut v = bytes.to_vec();
    v.resize(bytes.len().div_ceil(4).max(1) * 4, 0);
    v
}

fn sgemm_on<R: Runtime>(
    client: &ComputeClient<R>,
    p: &SGemm,
    t: Tile,
    c: &mut [f32],
) -> Result<(), GpuError> {
    let c_len = (p.m - 1) * p.ldc + p.n;
    let a_len = (p.m - 1) * p.a_rs + (p.k - 1) * p.a_cs + 1;
    // B's rows (k of them) and the encoding.
    let (benc, rs, bf, bw): (u32, usize, Vec<u8>, Vec<u8>) = {
        let rows = |rs: usize, width: usize| (p.k - 1) * rs + width;
        match p.b {
            BMat::F32 { data, rs } => (
                sgemm::B_F32,
                rs,
                f32_bytes(&data[..rows(rs, p.n)]),
                vec![0; 4],
            ),
            BMat::U4 { data, rs } => (
                sgemm::B_U4,
                rs,
                vec![0; 4],
                words_of(&data[..rows(rs, p.n.div_ceil(2))]),
            ),
            BMat::S4 { data, rs } => (
                sgemm::B_S4,
                rs,
                vec![0; 4],
                words_of(&data[..rows(rs, p.n.div_ceil(2))]),
            ),
            BMat::U8 { data, rs } => (
                sgemm::B_U8,
                rs,
                vec![0; 4],
                words_of(&data[..rows(rs, p.n)]),
            ),
            BMat::S8 { data, rs } => {
                let d: Vec<u8> = data[..rows(rs, p.n)].iter().map(|&x| x as u8).collect();
                (sgemm::B_S8, rs, vec![0; 4], words_of(&d))
            }
        }
    };
    for (what, v) in [
        ("C length", c_len),
        ("A length", a_len),
        ("B bytes", bw.len()),
        ("B floats", bf.len() / 4),
    ] {
        if u32::try_from(v).is_err() {
            return Err(GpuError(format!(
                "sgemm on the GPU: {what} {v} exceeds u32"
            )));
        }
    }
    let cubes = (p.n.div_ceil(t.tn as usize), p.m.div_ceil(t.tm as usize));
    let (max_x, max_y, _) = R::max_cube_count();
    if cubes.0 > max_x as usize || cubes.1 > max_y as usize {
        return Err(GpuError(format!(
            "sgemm on the GPU: {cubes:?} cubes exceed {max_x} x {max_y}"
        )));
    }
    let ah = client.create_from_slice(&f32_bytes(&p.a[..a_len]));
    let bfh = client.create_from_slice(&bf);
    let bwh = client.create_from_slice(&bw);
    let ch = client.create_from_slice(&f32_bytes(&c[..c_len]));
    sgemm::sgemm_kernel::launch::<R>(
        client,
        CubeCount::Static(cubes.0 as u32, cubes.1 as u32, 1),
        CubeDim::new_2d(t.tn / t.rn, t.tm / t.rm),
        unsafe { ArrayArg::from_raw_parts(ah, a_len) },
        unsafe { ArrayArg::from_raw_parts(bfh, bf.len() / 4) },
        unsafe { ArrayArg::from_raw_parts(bwh, bw.len() / 4) },
        unsafe { ArrayArg::from_raw_parts(ch.clone(), c_len) },
        p.m as u32,
        p.n as u32,
        p.k as u32,
        p.a_rs as u32,
        p.a_cs as u32,
        rs as u32,
        p.ldc as u32,
        p.alpha,
        p.beta,
        benc,
        t.tm,
        t.tn,
        t.kw,
        t.rm,
        t.rn,
    );
    let out = client.read_one_unchecked(ch);
    for (d, q) in c[..c_len].iter_mut().zip(out.chunks_exact(4)) {
        *d = f32::from_le_bytes([q[0], q[1], q[2], q[3]]);
    }
    Ok(())
}

#[cfg(feature = "cuda")]
fn open_cuda() -> Result<Gpu, GpuError> {
    if !cudarc::driver::sys::is_culib_present() {
        return Err(GpuError("no CUDA driver (libcuda) on this machine".into()));
    }
    let client = caught(|| cubecl::cuda::CudaRuntime::client(&cubecl::cuda::CudaDevice::new(0)))?;
    Ok(Gpu {
        client: Client::Cuda(client),
        name: "cuda: device 0".into(),
    })
}

#[cfg(not(feature = "cuda"))]
fn open_cuda() -> Result<Gpu, GpuError> {
    Err(GpuError(
        "this build has no CUDA runtime (build with the `cuda` feature)".into(),
    ))
}

/// Runs `f`, turning a panic inside cubecl into an error.
fn caught<T>(f: impl FnOnce() -> T) -> Result<T, GpuError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|e| {
        let msg = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        GpuError(format!("GPU runtime failed: {msg}"))
    })
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn qgemm_on<R: Runtime>(
    client: &ComputeClient<R>,
    p: &QGemm,
    bits: u32,
    t: Tile,
    c: &mut [f32],
) -> Result<(), GpuError> {
    let words = p.row_bytes / 4;
    let c_len = (p.m - 1) * p.ldc + p.n;
    let big = |what: &str, v: usize| {
        u32::try_from(v).map_err(|_| GpuError(format!("qgemm on the GPU: {what} {v} exceeds u32")))
    };
    big("C length", c_len)?;
    big("A words", p.m * words)?;
    big("B words", p.n * words)?;
    let cubes = (p.n.div_ceil(t.tn as usize), p.m.div_ceil(t.tm as usize));
    let (max_x, max_y, _) = R::max_cube_count();
    if cubes.0 > max_x as usize || cubes.1 > max_y as usize {
        return Err(GpuError(format!(
            "qgemm on the GPU: {cubes:?} cubes exceed {max_x} x {max_y}"
        )));
    }
    let a = client.create_from_slice(&p.a[..p.m * p.row_bytes]);
    let b = client.create_from_slice(&p.b[..p.n * p.row_bytes]);
    let s = client.create_from_slice(&f32_bytes(&p.col_scale[..p.n]));
    let ch = client.create_from_slice(&f32_bytes(&c[..c_len]));
    qgemm::qgemm_kernel::launch::<R>(
        client,
        CubeCount::Static(cubes.0 as u32, cubes.1 as u32, 1),
        CubeDim::new_2d(t.tn / t.rn, t.tm / t.rm),
        unsafe { ArrayArg::from_raw_parts(a, p.m * words) },
        unsafe { ArrayArg::from_raw_parts(b, p.n * words) },
        unsafe { ArrayArg::from_raw_parts(s, p.n) },
        unsafe { ArrayArg::from_raw_parts(ch.clone(), c_len) },
        p.m as u32,
        p.n as u32,
        words as u32,
        p.ldc as u32,
        p.alpha,
        bits,
        t.tm,
        t.tn,
        t.kw,
        t.rm,
        t.rn,
    );
    let out = client.read_one_unchecked(ch);
    for (d, q) in c[..c_len].iter_mut().zip(out.chunks_exact(4)) {
        *d = f32::from_le_bytes([q[0], q[1], q[2], q[3]]);
    }
    Ok(())
}
