//! A PyTorch checkpoint (safetensors) into a qmul [`Model`].
//!
//! Nothing in the file is trusted: the container goes through the
//! safetensors crate's validating parser, the architecture is rebuilt by
//! `qmul_models::resnet` (the same graph `qmul train` builds), and every
//! tensor the graph needs is checked by name, dtype, shape and value before
//! the model is assembled; a tensor the graph does not need is an error too
//! (a checkpoint of another network must not load half-way). Errors name the
//! PyTorch tensor and say what to do.

use super::names::{self, Place};
use super::{LatentState, FORMAT, FORMAT_VERSION};
use qmul_models::{resnet, ResNetConfig};
use qmul_runtime::graph::{Precision, QuantScheme};
use qmul_runtime::model::{Model, Slots};
use qmul_runtime::quant::{act, weight};
use safetensors::tensor::Dtype;
use safetensors::SafeTensors;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

/// What the file's metadata may lack, from the command line.
#[derive(Clone, Debug, Default)]
pub struct ReadOptions {
    /// The quantization scheme (needed when the file has no qmul-torch
    /// metadata and carries quantizer parameters).
    pub scheme: Option<QuantScheme>,
    /// Input height and width (needed when the file does not say; an error
    /// if the file says otherwise).
    pub input: Option<(usize, usize)>,
    /// Input height and width for a file that does not say, never checked
    /// against one that does (`qmul quantize` passes its data set's).
    pub input_fallback: Option<(usize, usize)>,
    /// How the `.qmul` file keeps latent weights (default: the file's
    /// `qmul_latent`, else sub-bin residuals).
    pub latent: Option<LatentState>,
}

/// A converted checkpoint.
#[derive(Debug)]
pub struct Converted {
    pub model: Model,
    pub latent: LatentState,
    /// One line on what the file was: format, architecture, scheme.
    pub description: String,
}

/// Largest checkpoint read (the `.qmul` loader's bound).
const MAX_BYTES: u64 = qmul_runtime::model_file::MAX_FILE_BYTES;

/// Reads and converts the checkpoint at `path`.
pub fn from_torch(path: &Path, opts: &ReadOptions) -> Result<Converted, String> {
    let len = std::fs::metadata(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    if len > MAX_BYTES {
        return Err(format!(
            "{}: {len} bytes, more than the {MAX_BYTES} a checkpoint may have",
            path.display()
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    from_torch_bytes(&bytes, opts).map_err(|e| format!("{}: {e}", path.display()))
}

/// `torch.save` writes a zip archive (PyTorch >= 1.6) or a bare pickle.
fn pickle_kind(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"PK\x03\x04") {
        Some("a zip archive")
    } else if bytes.first() == Some(&0x80) {
        Some("a pickle")
    } else {
        None
    }
}

/// Converts the bytes of a checkpoint.
pub fn from_torch_bytes(bytes: &[u8], opts: &ReadOptions) -> Result<Converted, String> {
    if let Some(kind) = pickle_kind(bytes) {
        return Err(format!(
            "this is {kind}, a `torch.save` file, not safetensors; qmul does not run pickles. \
             Export it with `qmul_torch.export(model, \"model.safetensors\")` \
             (tools/python/qmul_torch.py) or \
             `safetensors.torch.save_file(model.state_dict(), \"model.safetensors\")`"
        ));
    }
    let st =
        SafeTensors::deserialize(bytes).map_err(|e| format!("not a safetensors file ({e})"))?;
    let (_, header) =
        SafeTensors::read_metadata(bytes).map_err(|e| format!("not a safetensors file ({e})"))?;
    let meta = header.metadata().clone().unwrap_or_default();
    let (cfg, description) = architecture(&st, &meta, opts)?;
    let graph = resnet(&cfg).map_err(|e| e.to_string())?;
    // The metadata's numbers decide what gets allocated: the file must hold
    // at least the f32 weights they describe before any of it is.
    let need = weight_bytes(&graph)?;
    if need > bytes.len() as u64 {
        return Err(format!(
            "{description} needs {need} bytes of weights; the file has {} in all              (the metadata does not match the tensors)",
            bytes.len()
        ));
    }
    let mut model = Model::layout(graph).map_err(|e| e.to_string())?;
    let entries = names::entries(&model)?;
    let mut used: HashSet<&str> = HashSet::new();
    for e in &entries {
        let v = st.tensor(&e.torch).map_err(|_| {
            format!(
                "tensor '{}' missing (qmul's {}): the checkpoint does not match {}",
                e.torch, e.qmul, description
            )
        })?;
        if v.dtype() != Dtype::F32 {
            return Err(format!(
                "{} is {:?}; qmul reads float32 tensors (convert with `model.float()` before exporting)",
                e.torch,
                v.dtype()
            ));
        }
        let per_layer = per_layer_steps(&e.torch, v.shape(), &e.shape, model.graph.scheme);
        if v.shape() != e.shape.as_slice() && per_layer.is_none() {
            return Err(format!(
                "{}: shape {:?}, but {} needs {:?}",
                e.torch,
                v.shape(),
                description,
                e.shape
            ));
        }
        let mut data: Vec<f32> = v
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if let Some(cout) = per_layer {
            data = per_channel(&data, cout);
        }
        if let Some((i, x)) = data.iter().enumerate().find(|(_, x)| !x.is_finite()) {
            return Err(format!(
                "{}[{i}] is {x}: the checkpoint holds non-finite values (the run that made it diverged)",
                e.torch
            ));
        }
        let data = match e.conv {
            Some((cout, k, cin)) => names::torch_to_rows(&data, cout, k, cin),
            None => data,
        };
        match e.place {
            Place::Param(i) => model.params[i].data = data,
            Place::Buffer(i) => model.buffers[i].data = data,
        }
        used.insert(e.torch.as_str());
    }
    let mut extra: Vec<&str> = st
        .names()
        .into_iter()
        .filter(|n| !used.contains(*n) && !n.ends_with(".num_batches_tracked"))
        .collect();
    if !extra.is_empty() {
        extra.sort();
        let hint = if extra.iter().any(|n| n.starts_with("normalize.")) {
            " (input normalization has no counterpart in qmul, whose input is pixel / 255: \
             fold it into the data or train without it)"
        } else {
            ""
        };
        let shown: Vec<&str> = extra.iter().take(8).copied().collect();
        return Err(format!(
            "{} tensor(s) that {} has no place for: {}{}{hint}",
            extra.len(),
            description,
            shown.join(", "),
            if extra.len() > shown.len() {
                ", ..."
            } else {
                ""
            }
        ));
    }
    check_ranges(&model, &entries)?;
    model.info = match meta.get("info") {
        Some(s) => serde_json::from_str::<BTreeMap<String, String>>(s)
            .map_err(|e| format!("metadata 'info' is not a JSON object of strings: {e}"))?,
        None => BTreeMap::new(),
    };
    let latent = match (opts.latent, meta.get("qmul_latent")) {
        (Some(l), _) => l,
        (None, Some(s)) => LatentState::parse(s).ok_or_else(|| {
            format!("metadata 'qmul_latent' is '{s}' (centres, sub-bin or exact)")
        })?,
        (None, None) => LatentState::SubBin,
    };
    model.exact_latent = latent == LatentState::Exact;
    Ok(Converted {
        model,
        latent,
        description,
    })
}

/// A per-layer weight quantizer (`wq` of one step, LSQ `[s]`, or DSQ
/// `[u, alpha]`) where qmul keeps one per output channel: returns the
/// channel count, and the parameters become per-channel ones of equal value
/// (the quantization is the same; training in qmul then moves them apart).
fn per_layer_steps(
    name: &str,
    got: &[usize],
    want: &[usize],
    scheme: QuantScheme,
) -> Option<usize> {
    if !name.ends_with(".wq") || want.len() != 1 {
        return None;
    }
    match (scheme, got) {
        (QuantScheme::Lsq, [1]) => Some(want[0]),
        (QuantScheme::Dsq, [2]) => Some(want[0] - 1),
        _ => None,
    }
}

/// `[s]` -> `[s; cout]`, `[u, alpha]` -> `[u; cout] ++ [alpha]`.
fn per_channel(q: &[f32], cout: usize) -> Vec<f32> {
    let mut out = vec![q[0]; cout];
    out.extend_from_slice(&q[1..]);
    out
}

/// Bytes of the convolution and linear weights `graph` describes (as f32),
/// computed without allocating them.
fn weight_bytes(graph: &qmul_runtime::Graph) -> Result<u64, String> {
    let shapes = graph.shapes().map_err(|e| e.to_string())?;
    let mut total = 0u64;
    for op in &graph.nodes {
        let n = match op {
            qmul_runtime::Op::Conv { input, cout, k, .. } => {
                (*cout as u64) * (*k as u64) * (*k as u64) * shapes[*input].c as u64
            }
            qmul_runtime::Op::Linear { input, out, .. } => {
                *out as u64 * shapes[*input].len() as u64
            }
            _ => 0,
        };
        total = total.saturating_add(n.saturating_mul(4));
    }
    Ok(total)
}

/// Quantizer parameters must lie where training keeps them, and variances
/// must not be negative (checked as the `.qmul` loader does, with PyTorch names).
fn check_ranges(model: &Model, entries: &[names::Entry]) -> Result<(), String> {
    let torch = |qmul: &str| {
        entries
            .iter()
            .find(|e| e.qmul == qmul)
            .map_or(qmul.to_string(), |e| e.torch.clone())
    };
    let scheme = model.graph.scheme;
    for (slot, op) in model.slots.iter().zip(&model.graph.nodes) {
        let (t, clamped) = match slot {
            Slots::Conv { wq, kind, .. } | Slots::Linear { wq, kind, .. } => {
                let rows = match op {
                    qmul_runtime::Op::Conv { cout, .. } => *cout,
                    qmul_runtime::Op::Linear { out, .. } => *out,
                    _ => 0,
                };
                let t = &model.params[*wq];
                let mut c = t.data.clone();
                weight::clamp_params(*kind, &mut c, rows);
                (t, c)
            }
            Slots::Act { q } => {
                let t = &model.params[*q];
                if t.data.first().is_some_and(|&v| v <= 0.0) {
                    return Err(format!(
                        "{} = {:?}: the activation range was never set (an LSQ/DSQ quantizer \
                         initialises it from its first training batch: run one training step \
                         in PyTorch before exporting)",
                        torch(&t.name),
                        t.data
                    ));
                }
                let mut c = t.data.clone();
                act::clamp_params(scheme, &mut c);
                (t, c)
            }
            Slots::Bn { var, .. } => {
                let t = &model.buffers[*var];
                if let Some(v) = t.data.iter().find(|v| **v < 0.0) {
                    return Err(format!("{}: negative variance {v}", torch(&t.name)));
                }
                continue;
            }
            Slots::None => continue,
        };
        if let Some((i, (a, b))) = t
            .data
            .iter()
            .zip(&clamped)
            .enumerate()
            .find(|(_, (a, b))| a != b)
        {
            return Err(format!(
                "{}[{i}] = {a} is outside the quantizer's valid range (nearest valid: {b}; \
                 call `model.clamp_quant_params()` after each optimiser step)",
                torch(&t.name)
            ));
        }
    }
    Ok(())
}

fn meta_usize(meta: &HashMap<String, String>, key: &str) -> Result<usize, String> {
    let s = meta
        .get(key)
        .ok_or_else(|| format!("metadata '{key}' missing"))?;
    s.parse()
        .map_err(|_| format!("metadata '{key}' is '{s}', not a whole number"))
}

fn parse_scheme(s: &str, from: &str) -> Result<QuantScheme, String> {
    QuantScheme::parse(s).ok_or_else(|| {
        format!("{from} '{s}' is not a quantizer qmul knows (pact, lsq, dsq or none)")
    })
}

/// The network the file describes: from `qmul-torch` metadata, else from the
/// tensors' shapes (a plain torchvision-style CIFAR ResNet state dict) and
/// the options. Returns it with a one-line description.
fn architecture(
    st: &SafeTensors,
    meta: &HashMap<String, String>,
    opts: &ReadOptions,
) -> Result<(ResNetConfig, String), String> {
    let agree = |what: &str, file: String, flag: Option<String>| match flag {
        Some(f) if f != file => Err(format!(
            "the checkpoint's metadata says {what} {file}, the command line {f}"
        )),
        _ => Ok(()),
    };
    if let Some(format) = meta.get("format") {
        if format != FORMAT {
            return Err(format!(
                "metadata 'format' is '{format}', not '{FORMAT}' (a qmul model file is converted \
                 the other way: `qmul convert --to-torch`)"
            ));
        }
        let version = meta.get("format_version").map_or("", String::as_str);
        if version != FORMAT_VERSION {
            return Err(format!(
                "metadata 'format_version' is '{version}'; this build reads {FORMAT} version {FORMAT_VERSION}"
            ));
        }
        let arch = meta.get("arch").map_or("", String::as_str);
        let blocks = parse_blocks(meta.get("blocks").map_or("2,2,2,2", String::as_str))?;
        if arch != "resnet18" && arch != "resnet" {
            return Err(format!(
                "metadata 'arch' is '{arch}'; qmul converts its CIFAR-style ResNets (resnet18)"
            ));
        }
        let scheme = parse_scheme(
            meta.get("scheme")
                .ok_or("metadata 'scheme' missing")?
                .as_str(),
            "metadata 'scheme'",
        )?;
        agree(
            "scheme",
            scheme.name().into(),
            opts.scheme.map(|s| s.name().into()),
        )?;
        let (h, w) = (meta_usize(meta, "input_h")?, meta_usize(meta, "input_w")?);
        agree(
            "input",
            format!("{h}x{w}"),
            opts.input.map(|(a, b)| format!("{a}x{b}")),
        )?;
        let edge = match meta.get("edge_precision").map(String::as_str) {
            None | Some("int8") => Precision::Int8,
            Some("f32") => Precision::F32,
            Some("int4") => Precision::Int4,
            Some(e) => {
                return Err(format!(
                    "metadata 'edge_precision' is '{e}' (int8, int4 or f32)"
                ))
            }
        };
        let mut cfg = ResNetConfig::resnet18(
            meta_usize(meta, "width")?,
            h,
            w,
            meta_usize(meta, "in_channels")?,
            meta_usize(meta, "classes")?,
            scheme,
        );
        cfg.blocks = blocks;
        cfg.edge_precision = edge;
        let d = format!("{FORMAT} {version}: {}", describe(&cfg));
        return Ok((cfg, d));
    }
    // A plain state dict: the shapes say width, channels, classes and blocks.
    let shape = |n: &str| st.tensor(n).ok().map(|v| v.shape().to_vec());
    let stem = shape("conv1.weight").ok_or(
        "no qmul-torch metadata and no 'conv1.weight': not a CIFAR-style ResNet state dict",
    )?;
    let fc = shape("fc.weight").ok_or("no qmul-torch metadata and no 'fc.weight'")?;
    if stem.len() != 4 || stem[2] != 3 || stem[3] != 3 || fc.len() != 2 {
        return Err(format!(
            "conv1.weight {stem:?} / fc.weight {fc:?}: qmul's ResNets have a 3x3 stem \
             (an ImageNet-style 7x7 stem with max-pool does not map)"
        ));
    }
    let mut blocks = [0usize; 4];
    for (s, b) in blocks.iter_mut().enumerate() {
        while shape(&format!("layer{}.{}.conv1.weight", s + 1, *b)).is_some() {
            *b += 1;
        }
    }
    let quantized = st
        .names()
        .iter()
        .any(|n| n.ends_with(".q") || n.ends_with(".wq"));
    let scheme = match opts.scheme {
        Some(s) => s,
        None if quantized => {
            return Err(
                "the checkpoint has quantizer parameters (.q / .wq) but no qmul-torch \
                 metadata: say which with --scheme pact|lsq|dsq"
                    .into(),
            )
        }
        None => QuantScheme::None,
    };
    let (h, w) = opts.input.or(opts.input_fallback).ok_or(
        "the checkpoint does not say its input size (no qmul-torch metadata): pass --input HxW \
         (28x28 for Fashion-MNIST, 32x32 for CIFAR)",
    )?;
    let mut cfg = ResNetConfig::resnet18(stem[0], h, w, stem[1], fc[0], scheme);
    cfg.blocks = blocks;
    let d = format!("a plain state dict read as {}", describe(&cfg));
    Ok((cfg, d))
}

/// `resnet18 width 16, 1x28x28 input, 10 classes, pact`.
fn describe(cfg: &ResNetConfig) -> String {
    format!(
        "{} width {}, {}x{}x{} input, {} classes, {}",
        cfg.arch_name(),
        cfg.width,
        cfg.in_c,
        cfg.in_h,
        cfg.in_w,
        cfg.classes,
        cfg.scheme.name()
    )
}

fn parse_blocks(s: &str) -> Result<[usize; 4], String> {
    let v: Vec<usize> = s
        .split(',')
        .map(|p| p.trim().parse().ok().filter(|&n| n > 0 && n <= 64))
        .collect::<Option<_>>()
        .ok_or_else(|| format!("metadata 'blocks' is '{s}' (four block counts, e.g. 2,2,2,2)"))?;
    v.try_into()
        .map_err(|_| format!("metadata 'blocks' is '{s}' (four block counts, e.g. 2,2,2,2)"))
}

/// `HxW` (e.g. `28x28`).
pub fn parse_input(s: &str) -> Result<(usize, usize), String> {
    let bad = || format!("--input '{s}': expected HxW, e.g. 28x28");
    let (h, w) = s.split_once('x').ok_or_else(bad)?;
    let (h, w): (usize, usize) = (h.parse().map_err(|_| bad())?, w.parse().map_err(|_| bad())?);
    if h == 0 || w == 0 || h > 4096 || w > 4096 {
        return Err(bad());
    }
    Ok((h, w))
}
