//! GPU kernels (feature `gpu`: cubecl on wgpu, which reaches Vulkan, Metal and
//! DX12 devices and, in CI, Mesa's software Vulkan device lavapipe; feature
//! `cuda`: also cubecl's CUDA runtime). The CPU kernels stay the reference:
//! every GPU kernel is tested against [`crate::cpu::scalar`] on random
//! inputs (`tests/gpu_harness.rs`), integer GEMMs bit for bit.
//!
//! Opening a device never panics: a machine without a Vulkan adapter or
//! without the CUDA driver gets a [`GpuError`] that says so (cubecl itself
//! would panic on a device thread, where the caller cannot catch it).

pub mod act;
mod conv;
mod dsq;
mod elementwise;
mod loss;
mod norm;
pub mod ops;
pub mod qgemm;
mod reduce;
pub mod sgemm;
mod wquant;

pub use act::ActQuant;
pub use ops::{BnStats, ConvShape, WeightQuant};
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
    /// The largest buffer the device binds, in bytes.
    max_buffer: usize,
}

/// A buffer on the device: 32-bit elements (f32 values, or code bytes
/// packed four to a little-endian `u32` word). Operands stay on the device
/// across launches; only [`Gpu::download_f32`] brings values back.
#[derive(Clone)]
pub struct Buf {
    handle: cubecl::server::Handle,
    /// Elements (words or floats).
    len: usize,
}

impl Buf {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The sizes of an integer GEMM on device buffers (`A`: `m` rows, `B`: `n`
/// rows, of `row_bytes` each; `C`: `m` rows of `ldc`).
#[derive(Clone, Copy, Debug)]
pub struct QGemmDims {
    pub m: usize,
    pub n: usize,
    pub row_bytes: usize,
    pub ldc: usize,
    pub alpha: f32,
    pub bits: u32,
}

macro_rules! with_client {
    ($gpu:expr, $cl:ident => $body:expr) => {
        match &$gpu.client {
            Client::Wgpu($cl) => $body,
            #[cfg(feature = "cuda")]
            Client::Cuda($cl) => $body,
        }
    };
}

impl Gpu {
    /// Bytes onto the device, padded with zeros to whole words.
    pub fn upload_bytes(&self, bytes: &[u8]) -> Result<Buf, GpuError> {
        let w = words_of(bytes);
        let len = w.len() / 4;
        self.check_size(w.len())?;
        let handle = with_client!(self, cl => caught(|| cl.create_from_slice(&w))?);
        Ok(Buf { handle, len })
    }

    pub fn upload_f32(&self, v: &[f32]) -> Result<Buf, GpuError> {
        let b = if v.is_empty() {
            vec![0; 4]
        } else {
            f32_bytes(v)
        };
        self.check_size(b.len())?;
        let handle = with_client!(self, cl => caught(|| cl.create_from_slice(&b))?);
        Ok(Buf {
            handle,
            len: v.len().max(1),
        })
    }

    /// A buffer of `bytes` fits the device's limit (the runtime would panic
    /// on its own thread instead of failing the call).
    pub(crate) fn check_size(&self, bytes: usize) -> Result<(), GpuError> {
        if bytes > self.max_buffer {
            return Err(GpuError(format!(
                "a buffer of {bytes} bytes exceeds the device's limit of {} bytes \
                 (a smaller batch fits)",
                self.max_buffer
            )));
        }
        Ok(())
    }

    /// The first `len` floats of `b`, back on the host (waits for every
    /// launch that writes it).
    pub fn download_f32(&self, b: &Buf, len: usize) -> Result<Vec<f32>, GpuError> {
        if len > b.len {
            return Err(GpuError(format!(
                "download of {len} floats from a buffer of {}",
                b.len
            )));
        }
        let bytes = with_client!(self, cl => cl.read_one(b.handle.clone()))
            .map_err(|e| GpuError(format!("reading a GPU buffer: {e:?}")))?;
        Ok(bytes[..len * 4]
            .chunks_exact(4)
            .map(|q| f32::from_le_bytes([q[0], q[1], q[2], q[3]]))
            .collect())
    }

    /// Waits until every launch so far has finished.
    pub fn sync(&self) -> Result<(), GpuError> {
        with_client!(self, cl => cubecl::future::block_on(cl.sync()))
            .map_err(|e| GpuError(format!("GPU sync: {e:?}")))
    }

    /// The integer GEMM on device buffers: `c[i * ldc + j] = alpha *
    /// scale[j] * sum_k a[i][k] b[j][k]` for the call's `m x n` outputs
    /// (launched, not waited for).
    pub fn qgemm_on_device(
        &self,
        d: QGemmDims,
        a: &Buf,
        b: &Buf,
        scale: &Buf,
        c: &Buf,
        tile: Tile,
    ) -> Result<(), GpuError> {
        if d.bits != 4 && d.bits != 8 {
            return Err(GpuError(format!("qgemm: {}-bit codes (4 or 8)", d.bits)));
        }
        if !tile.valid() {
            return Err(GpuError(format!("qgemm: invalid tile {tile:?}")));
        }
        if !d.row_bytes.is_multiple_of(crate::pack::ROW_ALIGN_BYTES) || d.ldc < d.n {
            return Err(GpuError(format!("qgemm: bad sizes {d:?}")));
        }
        if d.m == 0 || d.n == 0 {
            return Ok(());
        }
        let words = d.row_bytes / 4;
        let c_len = (d.m - 1) * d.ldc + d.n;
        check_operands(
            "qgemm",
            &[
                ("A", a, d.m * words),
                ("B", b, d.n * words),
                ("scale", scale, d.n),
                ("C", c, c_len),
            ],
            c_len.max(d.m * words).max(d.n * words),
        )?;
        with_client!(self, cl => caught(|| launch_qgemm(cl, d, a, b, scale, c, tile))?)
    }
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
                let limits = first.limits();
                let max_buffer = limits
                    .max_buffer_size
                    .min(limits.max_storage_buffer_binding_size)
                    as usize;
                let client = caught(|| WgpuRuntime::client(&WgpuDevice::default()))?;
                Ok(Gpu {
                    client: Client::Wgpu(client),
                    name: format!(
                        "wgpu: {} ({:?}, {:?})",
                        info.name, info.device_type, info.backend
                    ),
                    max_buffer,
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
        if p.accumulate {
            return Err(GpuError(
                "qgemm on the GPU: accumulate is not supported".into(),
            ));
        }
        if p.m == 0 || p.n == 0 {
            return Ok(());
        }
        let c_len = (p.m - 1) * p.ldc + p.n;
        let d = QGemmDims {
            m: p.m,
            n: p.n,
            row_bytes: p.row_bytes,
            ldc: p.ldc,
            alpha: p.alpha,
            bits,
        };
        let a = self.upload_bytes(&p.a[..p.m * p.row_bytes])?;
        let b = self.upload_bytes(&p.b[..p.n * p.row_bytes])?;
        let s = self.upload_f32(&p.col_scale[..p.n])?;
        let cb = self.upload_f32(&c[..c_len])?;
        self.qgemm_on_device(d, &a, &b, &s, &cb, tile)?;
        c[..c_len].copy_from_slice(&self.download_f32(&cb, c_len)?);
        Ok(())
    }
}

/// How `B` of a float GEMM is stored on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BEnc {
    F32,
    U4,
    S4,
    U8,
    S8,
}

impl BEnc {
    fn code(self) -> u32 {
        match self {
            BEnc::F32 => sgemm::B_F32,
            BEnc::U4 => sgemm::B_U4,
            BEnc::S4 => sgemm::B_S4,
            BEnc::U8 => sgemm::B_U8,
            BEnc::S8 => sgemm::B_S8,
        }
    }

    /// Elements of a `B` buffer holding `k` rows of `rs` (floats or bytes).
    fn elements(self, k: usize, rs: usize, n: usize) -> usize {
        match self {
            BEnc::F32 => (k - 1) * rs + n,
            BEnc::U4 | BEnc::S4 => ((k - 1) * rs + n.div_ceil(2)).div_ceil(4),
            BEnc::U8 | BEnc::S8 => ((k - 1) * rs + n).div_ceil(4),
        }
    }
}

/// The sizes of a float GEMM on device buffers (`A` at strides `a_rs`,
/// `a_cs`; `B`: `k` rows of `b_rs` floats or bytes; `C`: `m` rows of `ldc`).
#[derive(Clone, Copy, Debug)]
pub struct SGemmDims {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a_rs: usize,
    pub a_cs: usize,
    pub b_rs: usize,
    pub b: BEnc,
    pub ldc: usize,
    pub alpha: f32,
    pub beta: f32,
}

impl Gpu {
    /// [`crate::sgemm`] on the GPU (`B` f32 or codes, widened as loaded),
    /// with the same operands, checks and result within float rounding:
    /// `c` is uploaded, every `C[i][j]` of the call written, and `c` read
    /// back. `tile.kw` is the reduction steps per shared-memory block.
    pub fn sgemm(&self, p: &SGemm, tile: Tile, c: &mut [f32]) -> Result<(), GpuError> {
        p.check(c.len()).map_err(|e| GpuError(e.to_string()))?;
        if p.m == 0 || p.n == 0 {
            return Ok(());
        }
        if p.k == 0 {
            // Nothing to multiply: C = beta C, as the reference writes it.
            return crate::cpu::scalar::sgemm(p, c).map_err(|e| GpuError(e.to_string()));
        }
        let c_len = (p.m - 1) * p.ldc + p.n;
        let a_len = (p.m - 1) * p.a_rs + (p.k - 1) * p.a_cs + 1;
        let rows = |rs: usize, width: usize| (p.k - 1) * rs + width;
        let (enc, rs, b) = match p.b {
            BMat::F32 { data, rs } => (BEnc::F32, rs, self.upload_f32(&data[..rows(rs, p.n)])?),
            BMat::U4 { data, rs } => (
                BEnc::U4,
                rs,
                self.upload_bytes(&data[..rows(rs, p.n.div_ceil(2))])?,
            ),
            BMat::S4 { data, rs } => (
                BEnc::S4,
                rs,
                self.upload_bytes(&data[..rows(rs, p.n.div_ceil(2))])?,
            ),
            BMat::U8 { data, rs } => (BEnc::U8, rs, self.upload_bytes(&data[..rows(rs, p.n)])?),
            BMat::S8 { data, rs } => {
                let d: Vec<u8> = data[..rows(rs, p.n)].iter().map(|&x| x as u8).collect();
                (BEnc::S8, rs, self.upload_bytes(&d)?)
            }
        };
        let d = SGemmDims {
            m: p.m,
            n: p.n,
            k: p.k,
            a_rs: p.a_rs,
            a_cs: p.a_cs,
            b_rs: rs,
            b: enc,
            ldc: p.ldc,
            alpha: p.alpha,
            beta: p.beta,
        };
        let a = self.upload_f32(&p.a[..a_len])?;
        let cb = self.upload_f32(&c[..c_len])?;
        self.sgemm_on_device(d, &a, &b, &cb, tile)?;
        c[..c_len].copy_from_slice(&self.download_f32(&cb, c_len)?);
        Ok(())
    }

    /// The float GEMM on device buffers (launched, not waited for).
    pub fn sgemm_on_device(
        &self,
        d: SGemmDims,
        a: &Buf,
        b: &Buf,
        c: &Buf,
        tile: Tile,
    ) -> Result<(), GpuError> {
        if !tile.valid() {
            return Err(GpuError(format!("sgemm: invalid tile {tile:?}")));
        }
        if d.ldc < d.n {
            return Err(GpuError(format!("sgemm: bad sizes {d:?}")));
        }
        if d.m == 0 || d.n == 0 || d.k == 0 {
            return Err(GpuError(format!(
                "sgemm on device buffers: empty sizes {d:?}"
            )));
        }
        let c_len = (d.m - 1) * d.ldc + d.n;
        let a_len = (d.m - 1) * d.a_rs + (d.k - 1) * d.a_cs + 1;
        let b_len = d.b.elements(d.k, d.b_rs, d.n);
        check_operands(
            "sgemm",
            &[("A", a, a_len), ("B", b, b_len), ("C", c, c_len)],
            c_len.max(a_len).max(d.k * d.b_rs + d.n),
        )?;
        with_client!(self, cl => caught(|| launch_sgemm(cl, d, a, b, c, tile))?)
    }
}

/// Each buffer holds at least the elements the call reads or writes, and the
/// largest index fits the kernels' `u32` arithmetic.
fn check_operands(op: &str, bufs: &[(&str, &Buf, usize)], largest: usize) -> Result<(), GpuError> {
    for &(what, buf, need) in bufs {
        if buf.len < need {
            return Err(GpuError(format!(
                "{op}: {what} holds {} elements, needs {need}",
                buf.len
            )));
        }
    }
    if u32::try_from(largest).is_err() {
        return Err(GpuError(format!(
            "{op} on the GPU: operands exceed u32 indexing"
        )));
    }
    Ok(())
}

/// The cubes covering an `m x n` output with tile `t`, and their units.
fn grid<R: Runtime>(
    op: &str,
    m: usize,
    n: usize,
    t: Tile,
) -> Result<(CubeCount, CubeDim), GpuError> {
    let cubes = (n.div_ceil(t.tn as usize), m.div_ceil(t.tm as usize));
    let (max_x, max_y, _) = R::max_cube_count();
    if cubes.0 > max_x as usize || cubes.1 > max_y as usize {
        return Err(GpuError(format!(
            "{op} on the GPU: {cubes:?} cubes exceed {max_x} x {max_y}"
        )));
    }
    Ok((
        CubeCount::Static(cubes.0 as u32, cubes.1 as u32, 1),
        CubeDim::new_2d(t.tn / t.rn, t.tm / t.rm),
    ))
}

/// Bytes padded to whole `u32` words (the kernels read `u32` arrays).
fn words_of(bytes: &[u8]) -> Vec<u8> {
    let mut v = bytes.to_vec();
    v.resize(bytes.len().div_ceil(4).max(1) * 4, 0);
    v
}

fn launch_sgemm<R: Runtime>(
    client: &ComputeClient<R>,
    d: SGemmDims,
    a: &Buf,
    b: &Buf,
    c: &Buf,
    t: Tile,
) -> Result<(), GpuError> {
    let (count, dim) = grid::<R>("sgemm", d.m, d.n, t)?;
    // `B` is passed as both the f32 and the word array; the kernel reads the
    // one its comptime encoding names.
    sgemm::sgemm_kernel::launch::<R>(
        client,
        count,
        dim,
        unsafe { ArrayArg::from_raw_parts(a.handle.clone(), a.len) },
        unsafe { ArrayArg::from_raw_parts(b.handle.clone(), b.len) },
        unsafe { ArrayArg::from_raw_parts(b.handle.clone(), b.len) },
        unsafe { ArrayArg::from_raw_parts(c.handle.clone(), c.len) },
        d.m as u32,
        d.n as u32,
        d.k as u32,
        d.a_rs as u32,
        d.a_cs as u32,
        d.b_rs as u32,
        d.ldc as u32,
        d.alpha,
        d.beta,
        d.b.code(),
        t.tm,
        t.tn,
        t.kw,
        t.rm,
        t.rn,
    );
    Ok(())
}

#[cfg(feature = "cuda")]
fn open_cuda() -> Result<Gpu, GpuError> {
    // SAFETY: this only tries to load the CUDA driver library (running its
    // initialisers, as any CUDA program does) and reports whether it loaded.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(GpuError("no CUDA driver (libcuda) on this machine".into()));
    }
    let client = caught(|| cubecl::cuda::CudaRuntime::client(&cubecl::cuda::CudaDevice::new(0)))?;
    Ok(Gpu {
        client: Client::Cuda(client),
        name: "cuda: device 0".into(),
        max_buffer: usize::MAX,
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

fn launch_qgemm<R: Runtime>(
    client: &ComputeClient<R>,
    d: QGemmDims,
    a: &Buf,
    b: &Buf,
    scale: &Buf,
    c: &Buf,
    t: Tile,
) -> Result<(), GpuError> {
    let (count, dim) = grid::<R>("qgemm", d.m, d.n, t)?;
    qgemm::qgemm_kernel::launch::<R>(
        client,
        count,
        dim,
        unsafe { ArrayArg::from_raw_parts(a.handle.clone(), a.len) },
        unsafe { ArrayArg::from_raw_parts(b.handle.clone(), b.len) },
        unsafe { ArrayArg::from_raw_parts(scale.handle.clone(), scale.len) },
        unsafe { ArrayArg::from_raw_parts(c.handle.clone(), c.len) },
        d.m as u32,
        d.n as u32,
        (d.row_bytes / 4) as u32,
        d.ldc as u32,
        d.alpha,
        d.bits,
        t.tm,
        t.tn,
        t.kw,
        t.rm,
        t.rn,
    );
    Ok(())
}
