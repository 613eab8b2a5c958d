//! Kernel throughput on the GEMM shapes of ResNet-18 (width 16) training on
//! 28x28 images at batch 128: the forward integer GEMMs and the two backward
//! f32 GEMMs (dX = dY * W_q^T, dW = X_q^T * dY, both reading packed codes).
//!
//! Throughput is set to `2 * m * n * k` elements per GEMM, so criterion's
//! `elem/s` is operations per second (one multiply or one add = one element; the
//! group names say `[elem=op]`): `Gelem/s` reads as GOP/s. `k` counts real
//! reduction steps, not the zero padding of packed rows.
//!
//! Every variant of `qmul_kernels::available()` is timed through its own entry
//! points on one thread, plus the public multithreaded function (`public-mt`,
//! active variant, `QMUL_THREADS` or all cores). The scalar reference is slow,
//! so it runs on the shape with the pixel dimension divided by
//! [`SCALAR_SHRINK`] (its rate per op is size-independent). At the end a table
//! prints GOP/s per variant and the speedup over scalar.
//!
//! `cargo bench -p qmul-benches --bench kernels [-- FILTER]`, e.g. `-- sgemm_dW`.

use criterion::{Criterion, Throughput};
use qmul_kernels::{pack, BMat, KernelSet, QGemm, SGemm};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const BATCH: usize = 128;
const SCALAR_SHRINK: usize = 16;

/// One convolution of the network as im2col GEMMs.
#[derive(Clone, Copy)]
struct Layer {
    name: &'static str,
    /// Output pixels over the batch (rows of the im2col matrix).
    pixels: usize,
    /// Reduction length of the forward GEMM: `3 * 3 * Cin`.
    kd: usize,
    cout: usize,
    /// 8-bit activations and weights (the stem) instead of 4-bit.
    eight_bit: bool,
}

/// The stem and the repeated 3x3 convolution of each stage.
const LAYERS: [Layer; 5] = [
    Layer {
        name: "stem",
        pixels: BATCH * 28 * 28,
        kd: 9,
        cout: 16,
        eight_bit: true,
    },
    Layer {
        name: "stage1",
        pixels: BATCH * 28 * 28,
        kd: 144,
        cout: 16,
        eight_bit: false,
    },
    Layer {
        name: "stage2",
        pixels: BATCH * 14 * 14,
        kd: 288,
        cout: 32,
        eight_bit: false,
    },
    Layer {
        name: "stage3",
        pixels: BATCH * 7 * 7,
        kd: 576,
        cout: 64,
        eight_bit: false,
    },
    Layer {
        name: "stage4",
        pixels: BATCH * 4 * 4,
        kd: 1152,
        cout: 128,
        eight_bit: false,
    },
];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn f32(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    }
}

/// A zeroed f32 buffer whose start is 64-byte aligned (a cache line), as a
/// GEMM output should be: misaligned rows split every vector store.
struct AlignedBuf {
    v: Vec<f32>,
    off: usize,
    len: usize,
}

impl AlignedBuf {
    fn new(len: usize) -> Self {
        let v = vec![0.0f32; len + 16];
        let off = (16 - (v.as_ptr() as usize / 4) % 16) % 16;
        AlignedBuf { v, off, len }
    }
    fn get(&mut self) -> &mut [f32] {
        &mut self.v[self.off..self.off + self.len]
    }
}

/// Operands of one layer, sized for `pixels` output pixels.
struct Data {
    pixels: usize,
    /// im2col activation codes, one padded row per pixel (4-bit packed or 8-bit).
    x: Vec<u8>,
    x_rs: usize,
    /// Weight codes, one padded row per output channel.
    w: Vec<u8>,
    dy: Vec<f32>,
    ones: Vec<f32>,
}

impl Data {
    fn new(l: &Layer, pixels: usize) -> Data {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (pixels * l.kd) as u64);
        let (x, w, x_rs) = if l.eight_bit {
            let xc: Vec<u8> = (0..pixels * l.kd).map(|_| rng.next() as u8).collect();
            let wc: Vec<i8> = (0..l.cout * l.kd).map(|_| rng.next() as i8).collect();
            let w = pack::pad_rows_8bit(&wc, l.cout, l.kd)
                .unwrap()
                .into_iter()
                .map(|c| c as u8)
                .collect();
            (
                pack::pad_rows_8bit(&xc, pixels, l.kd).unwrap(),
                w,
                pack::row_bytes_8bit(l.kd),
            )
        } else {
            let xc: Vec<u8> = (0..pixels * l.kd)
                .map(|_| (rng.next() % 16) as u8)
                .collect();
            let wc: Vec<i8> = (0..l.cout * l.kd)
                .map(|_| (rng.next() % 16) as i8 - 8)
                .collect();
            (
                pack::pack_u4(&xc, pixels, l.kd).unwrap(),
                pack::pack_s4(&wc, l.cout, l.kd).unwrap(),
                pack::row_bytes_4bit(l.kd),
            )
        };
        let dy = (0..pixels * l.cout).map(|_| rng.f32()).collect();
        Data {
            pixels,
            x,
            x_rs,
            w,
            dy,
            ones: vec![1.0; l.cout],
        }
    }

    /// Forward: `Y[pixel][cout] = sum_k X[pixel][k] * W[cout][k]`.
    fn fwd(&self, l: &Layer) -> QGemm<'_> {
        QGemm {
            m: self.pixels,
            n: l.cout,
            row_bytes: self.x_rs,
            a: &self.x,
            b: &self.w,
            alpha: 1.0,
            col_scale: &self.ones,
            ldc: l.cout,
            accumulate: false,
        }
    }

    /// dX columns: `dXc[pixel][kd] = sum_cout dY[pixel][cout] * W[cout][kd]`.
    fn dx(&self, l: &Layer) -> SGemm<'_> {
        let b = if l.eight_bit {
            BMat::S8 {
                data: bytemuck_i8(&self.w),
                rs: self.x_rs,
            }
        } else {
            BMat::S4 {
                data: &self.w,
                rs: self.x_rs,
            }
        };
        SGemm {
            m: self.pixels,
            n: l.kd,
            k: l.cout,
            alpha: 1.0,
            a: &self.dy,
            a_rs: l.cout,
            a_cs: 1,
            b,
            beta: 0.0,
            ldc: l.kd,
        }
    }

    /// dW: `dW[cout][kd] = sum_pixel dY[pixel][cout] * X[pixel][kd]` (A = dY^T).
    fn dw(&self, l: &Layer) -> SGemm<'_> {
        let b = if l.eight_bit {
            BMat::U8 {
                data: &self.x,
                rs: self.x_rs,
            }
        } else {
            BMat::U4 {
                data: &self.x,
                rs: self.x_rs,
            }
        };
        SGemm {
            m: l.cout,
            n: l.kd,
            k: self.pixels,
            alpha: 1.0,
            a: &self.dy,
            a_rs: 1,
            a_cs: l.cout,
            b,
            beta: 0.0,
            ldc: l.kd,
        }
    }
}

fn bytemuck_i8(v: &[u8]) -> &[i8] {
    // SAFETY: u8 and i8 have the same size, alignment and validity.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const i8, v.len()) }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    Fwd,
    Dx,
    Dw,
}

impl Op {
    fn label(self, l: &Layer) -> &'static str {
        match self {
            Op::Fwd if l.eight_bit => "qgemm_u8s8_fwd",
            Op::Fwd => "qgemm_u4s4_fwd",
            Op::Dx => "sgemm_dX",
            Op::Dw => "sgemm_dW",
        }
    }

    /// `(m, n, k)` of the GEMM for `pixels` output pixels.
    fn mnk(self, l: &Layer, pixels: usize) -> (usize, usize, usize) {
        match self {
            Op::Fwd => (pixels, l.cout, l.kd),
            Op::Dx => (pixels, l.kd, l.cout),
            Op::Dw => (l.cout, l.kd, pixels),
        }
    }
}

/// Best seconds per call, by (layer index, op) then variant name.
type Results = BTreeMap<(usize, Op), BTreeMap<String, (f64, f64)>>;
static RESULTS: Mutex<Results> = Mutex::new(BTreeMap::new());

/// Runs one (layer, op, variant) benchmark; `f` performs one GEMM call.
fn bench_one(
    c: &mut Criterion,
    li: usize,
    op: Op,
    variant: &str,
    pixels: usize,
    scalar: bool,
    mut f: impl FnMut(),
) {
    let l = &LAYERS[li];
    let (m, n, k) = op.mnk(l, pixels);
    let ops = 2.0 * m as f64 * n as f64 * k as f64;
    let (fm, fnn, fk) = op.mnk(l, l.pixels);
    let mut g = c.benchmark_group(format!(
        "{} {} m={fm} n={fnn} k={fk} [elem=op]",
        op.label(l),
        l.name
    ));
    g.throughput(Throughput::Elements(ops as u64));
    g.sample_size(10);
    g.warm_up_time(Duration::from_millis(if scalar { 100 } else { 300 }));
    g.measurement_time(Duration::from_millis(if scalar { 1000 } else { 1500 }));
    let id = if scalar {
        format!("{variant} (pixels/{SCALAR_SHRINK})")
    } else {
        variant.to_string()
    };
    g.bench_function(id, |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                f();
            }
            let d = t.elapsed();
            let per = d.as_secs_f64() / iters as f64;
            let mut r = RESULTS.lock().unwrap();
            let e = r
                .entry((li, op))
                .or_default()
                .entry(variant.to_string())
                .or_insert((f64::MAX, ops));
            e.0 = e.0.min(per);
            d
        })
    });
    g.finish();
}

fn bench_layer(c: &mut Criterion, li: usize, variants: &[&'static KernelSet]) {
    let l = LAYERS[li];
    let full = Data::new(&l, l.pixels);
    let small = Data::new(&l, l.pixels / SCALAR_SHRINK);
    let ops = if l.eight_bit {
        vec![Op::Fwd, Op::Dw]
    } else {
        vec![Op::Fwd, Op::Dx, Op::Dw]
    };
    for op in ops {
        let (m, n, _) = op.mnk(&l, l.pixels);
        let mut out = AlignedBuf::new(m * n);
        for &ks in variants {
            let scalar = ks.name == "scalar";
            let d = if scalar { &small } else { &full };
            let (sm, sn, _) = op.mnk(&l, d.pixels);
            let c_len = sm * sn;
            match op {
                Op::Fwd => {
                    let p = d.fwd(&l);
                    let f = if l.eight_bit {
                        ks.qgemm_u8s8
                    } else {
                        ks.qgemm_u4s4
                    };
                    bench_one(c, li, op, ks.name, d.pixels, scalar, || {
                        f(black_box(&p), &mut out.get()[..c_len]).expect("operands match the sizes")
                    });
                }
                Op::Dx | Op::Dw => {
                    let p = if op == Op::Dx { d.dx(&l) } else { d.dw(&l) };
                    bench_one(c, li, op, ks.name, d.pixels, scalar, || {
                        (ks.sgemm)(black_box(&p), &mut out.get()[..c_len])
                            .expect("operands match the sizes")
                    });
                }
            }
        }
        let mt = format!(
            "public-mt({}x{})",
            qmul_kernels::par::threads(),
            qmul_kernels::active().name
        );
        match op {
            Op::Fwd => {
                let p = full.fwd(&l);
                let f = if l.eight_bit {
                    qmul_kernels::qgemm_u8s8
                } else {
                    qmul_kernels::qgemm_u4s4
                };
                bench_one(c, li, op, &mt, full.pixels, false, || {
                    f(black_box(&p), out.get()).expect("operands match the sizes")
                });
            }
            Op::Dx | Op::Dw => {
                let p = if op == Op::Dx {
                    full.dx(&l)
                } else {
                    full.dw(&l)
                };
                bench_one(c, li, op, &mt, full.pixels, false, || {
                    qmul_kernels::sgemm(black_box(&p), out.get()).expect("operands match the sizes")
                });
            }
        }
    }
}

fn print_table(variants: &[&'static KernelSet]) {
    let r = RESULTS.lock().unwrap();
    if r.is_empty() {
        return;
    }
    let mut cols: Vec<String> = variants.iter().map(|k| k.name.to_string()).collect();
    for per in r.values() {
        for name in per.keys() {
            if !cols.contains(name) {
                cols.push(name.clone());
            }
        }
    }
    println!("\nGOP/s (x speedup over scalar, whose shape has pixels/{SCALAR_SHRINK}); one thread unless public-mt");
    print!("{:<34}", "layer / op (m x n x k)");
    for c in &cols {
        print!(" {c:>24}");
    }
    println!();
    for (&(li, op), per) in r.iter() {
        let l = &LAYERS[li];
        let (m, n, k) = op.mnk(l, l.pixels);
        print!("{:<34}", format!("{} {} {m}x{n}x{k}", l.name, op.label(l)));
        let rate = |name: &str| per.get(name).map(|&(s, ops)| ops / s / 1e9);
        let base = rate("scalar");
        for c in &cols {
            let cell = match (rate(c), base) {
                (Some(g), Some(b)) => format!("{g:.1} ({:.0}x)", g / b),
                (Some(g), None) => format!("{g:.1}"),
                _ => "-".into(),
            };
            print!(" {cell:>24}");
        }
        println!();
    }
}

fn main() {
    let variants = qmul_kernels::available();
    let mut c = Criterion::default().configure_from_args();
    for li in 0..LAYERS.len() {
        bench_layer(&mut c, li, &variants);
    }
    c.final_summary();
    print_table(&variants);
}
