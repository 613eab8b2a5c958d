//! The `.qmul` model file: a safetensors container, memory-mapped on load.
//!
//! Tensors per layer (`{name}` is the layer name from the graph):
//! * conv / linear, 4-bit: `{name}.codes` U8 `[cout, row_bytes]` packed signed
//!   codes (nibble order in `qmul_kernels::pack`), `{name}.scale` F32 `[cout]`;
//!   8-bit: `{name}.codes` I8 `[cout, row_bytes]`, `{name}.scale`; f32:
//!   `{name}.weight` F32 `[cout, k*k*cin]` with `(ky, kx, cin)` order;
//!   `{name}.wq` F32 quantizer parameters when the quantizer has any;
//!   linear also `{name}.bias`.
//! * BatchNorm: `{name}.gamma`, `.beta`, `.running_mean`, `.running_var` F32.
//! * Act: `{name}.q` F32 (PACT `[a]`, LSQ `[s]`, DSQ `[u, alpha]`).
//!
//! `__metadata__` holds `format` = `qmul`, `format_version`, `graph` (JSON of
//! [`Graph`]), `scheme`, `nibble_order`, `input` (pixel scaling) and `info` (JSON
//! object of free-form facts). Loading trusts nothing: the container is parsed by
//! the safetensors crate (header size, offsets, overlaps), then every tensor's
//! name, dtype and shape is checked against the graph, padding nibbles must be
//! zero, floats finite, scales positive, and the codes must requantize exactly
//! from the dequantized weights. A bad file is an error, never a panic.

use crate::graph::{Graph, Op, Precision};
use crate::model::{Model, Slots};
use crate::quant::weight::{self, WeightQuant};
use qmul_kernels::pack;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::BTreeMap;
use std::path::Path;

pub const FORMAT: &str = "qmul";
pub const FORMAT_VERSION: &str = "1";
pub const NIBBLE_ORDER: &str =
    "low-first: byte b of a row holds element 2b in bits 0-3 and element 2b+1 in bits 4-7; \
rows padded with zero codes to a multiple of 32 elements";
pub const INPUT: &str = "u8 pixels NHWC, value = pixel / 255";

/// Why a model file could not be written or read.
#[derive(Debug)]
pub enum ModelFileError {
    Io(std::io::Error),
    /// The file is not a valid qmul model; the message says what is wrong.
    Invalid(String),
}

impl std::fmt::Display for ModelFileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModelFileError::Io(e) => write!(f, "model file: {e}"),
            ModelFileError::Invalid(m) => write!(f, "invalid model file: {m}"),
        }
    }
}

impl std::error::Error for ModelFileError {}

impl From<std::io::Error> for ModelFileError {
    fn from(e: std::io::Error) -> Self {
        ModelFileError::Io(e)
    }
}

fn invalid<T>(m: impl Into<String>) -> Result<T, ModelFileError> {
    Err(ModelFileError::Invalid(m.into()))
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// One tensor to write: dtype, shape, little-endian bytes.
struct Out(Dtype, Vec<usize>, Vec<u8>);

/// Serializes a model into the bytes of a `.qmul` file.
pub fn to_bytes(model: &Model) -> Result<Vec<u8>, ModelFileError> {
    let mut out: BTreeMap<String, Out> = BTreeMap::new();
    let qw = model.quantize_weights();
    for (i, op) in model.graph.nodes.iter().enumerate() {
        let name = op.name().unwrap_or_default().to_string();
        match &model.slots[i] {
            Slots::Conv { w, wq, .. } | Slots::Linear { w, wq, .. } => {
                let rows = model.params[*w].shape[0];
                match qw[i].as_ref().expect("weights quantized") {
                    crate::model::QWeights::Int4 { packed, scale } => {
                        out.insert(
                            format!("{name}.codes"),
                            Out(Dtype::U8, vec![rows, packed.len() / rows], packed.clone()),
                        );
                        out.insert(
                            format!("{name}.scale"),
                            Out(Dtype::F32, vec![rows], f32_bytes(scale)),
                        );
                    }
                    crate::model::QWeights::Int8 { rows: r, scale } => {
                        out.insert(
                            format!("{name}.codes"),
                            Out(Dtype::I8, vec![rows, r.len() / rows], r.clone()),
                        );
                        out.insert(
                            format!("{name}.scale"),
                            Out(Dtype::F32, vec![rows], f32_bytes(scale)),
                        );
                    }
                    crate::model::QWeights::F32(wf) => {
                        out.insert(
                            format!("{name}.weight"),
                            Out(Dtype::F32, model.params[*w].shape.clone(), f32_bytes(wf)),
                        );
                    }
                }
                let q = &model.params[*wq];
                if !q.data.is_empty() {
                    out.insert(
                        q.name.clone(),
                        Out(Dtype::F32, q.shape.clone(), f32_bytes(&q.data)),
                    );
                }
                if let Slots::Linear { b, .. } = &model.slots[i] {
                    let t = &model.params[*b];
                    out.insert(
                        t.name.clone(),
                        Out(Dtype::F32, t.shape.clone(), f32_bytes(&t.data)),
                    );
                }
            }
            Slots::Bn {
                gamma,
                beta,
                mean,
                var,
            } => {
                for t in [
                    &model.params[*gamma],
                    &model.params[*beta],
                    &model.buffers[*mean],
                    &model.buffers[*var],
                ] {
                    out.insert(
                        t.name.clone(),
                        Out(Dtype::F32, t.shape.clone(), f32_bytes(&t.data)),
                    );
                }
            }
            Slots::Act { q } => {
                let t = &model.params[*q];
                if !t.data.is_empty() {
                    out.insert(
                        t.name.clone(),
                        Out(Dtype::F32, t.shape.clone(), f32_bytes(&t.data)),
                    );
                }
            }
            Slots::None => {}
        }
    }
    let mut meta = BTreeMap::new();
    meta.insert("format", FORMAT.to_string());
    meta.insert("format_version", FORMAT_VERSION.to_string());
    meta.insert(
        "graph",
        serde_json::to_string(&model.graph).map_err(|e| ModelFileError::Invalid(e.to_string()))?,
    );
    meta.insert("scheme", model.graph.scheme.name().to_string());
    meta.insert("nibble_order", NIBBLE_ORDER.to_string());
    meta.insert("input", INPUT.to_string());
    meta.insert(
        "info",
        serde_json::to_string(&model.info).map_err(|e| ModelFileError::Invalid(e.to_string()))?,
    );
    Ok(serialize(&meta, &out))
}

/// Writes the safetensors container with keys in sorted order, so that the same
/// model always gives the same bytes (the safetensors crate's writer orders
/// `__metadata__` by hash). Reading goes through the crate's validating parser.
fn serialize(meta: &BTreeMap<&str, String>, tensors: &BTreeMap<String, Out>) -> Vec<u8> {
    let dtype = |d: &Dtype| match d {
        Dtype::U8 => "U8",
        Dtype::I8 => "I8",
        _ => "F32",
    };
    let mut header = serde_json::Map::new();
    header.insert(
        "__metadata__".into(),
        serde_json::to_value(meta).unwrap_or_default(),
    );
    let mut offset = 0usize;
    for (name, Out(d, shape, bytes)) in tensors {
        header.insert(
            name.clone(),
            serde_json::json!({ "dtype": dtype(d), "shape": shape, "data_offsets": [offset, offset + bytes.len()] }),
        );
        offset += bytes.len();
    }
    let mut h = serde_json::Value::Object(header).to_string().into_bytes();
    h.resize(h.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + h.len() + offset);
    out.extend_from_slice(&(h.len() as u64).to_le_bytes());
    out.extend_from_slice(&h);
    for Out(_, _, bytes) in tensors.values() {
        out.extend_from_slice(bytes);
    }
    out
}

/// Writes `model` to `path` without ever leaving a partial file there: the bytes
/// go to a temporary file in the same directory, which is flushed to disk,
/// renamed over `path`, and the directory entry is flushed too.
pub fn save(model: &Model, path: &Path) -> Result<(), ModelFileError> {
    let bytes = to_bytes(model)?;
    write_atomic(path, &bytes)?;
    Ok(())
}

/// Crash-safe replacement of `path` by `bytes`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// Memory-maps and loads a model file.
pub fn load(path: &Path) -> Result<Model, ModelFileError> {
    let file = std::fs::File::open(path)?;
    // SAFETY: the map is read-only and dropped before this function returns; a
    // concurrent truncation of the file is outside what qmul defends against
    // (model files are replaced by rename, never rewritten in place).
    let map = unsafe { memmap2::Mmap::map(&file)? };
    from_bytes(&map)
}

fn read_f32(v: &TensorView, name: &str, shape: &[usize]) -> Result<Vec<f32>, ModelFileError> {
    if v.dtype() != Dtype::F32 || v.shape() != shape {
        return invalid(format!(
            "{name}: expected F32 {shape:?}, found {:?} {:?}",
            v.dtype(),
            v.shape()
        ));
    }
    let data: Vec<f32> = v
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    if data.iter().any(|x| !x.is_finite()) {
        return invalid(format!("{name}: non-finite value"));
    }
    Ok(data)
}

/// Parses and validates the bytes of a `.qmul` file.
pub fn from_bytes(bytes: &[u8]) -> Result<Model, ModelFileError> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| ModelFileError::Invalid(format!("container: {e}")))?;
    let (_, meta) = SafeTensors::read_metadata(bytes)
        .map_err(|e| ModelFileError::Invalid(format!("container: {e}")))?;
    let md = meta.metadata().clone().unwrap_or_default();
    let get = |k: &str| {
        md.get(k)
            .ok_or_else(|| ModelFileError::Invalid(format!("metadata '{k}' missing")))
    };
    if get("format")? != FORMAT {
        return invalid("not a qmul model (metadata 'format')");
    }
    if get("format_version")? != FORMAT_VERSION {
        return invalid(format!(
            "unsupported format_version {}",
            get("format_version")?
        ));
    }
    let graph: Graph = serde_json::from_str(get("graph")?)
        .map_err(|e| ModelFileError::Invalid(format!("graph: {e}")))?;
    let info: BTreeMap<String, String> = match md.get("info") {
        Some(s) => {
            serde_json::from_str(s).map_err(|e| ModelFileError::Invalid(format!("info: {e}")))?
        }
        None => BTreeMap::new(),
    };
    let mut model = Model::layout(graph).map_err(|e| ModelFileError::Invalid(e.to_string()))?;
    model.info = info;
    let mut expected: Vec<String> = Vec::new();
    let tensor = |name: &str| {
        st.tensor(name)
            .map_err(|_| ModelFileError::Invalid(format!("tensor '{name}' missing")))
    };
    for i in 0..model.graph.nodes.len() {
        let op = model.graph.nodes[i].clone();
        let name = op.name().unwrap_or_default().to_string();
        match model.slots[i].clone() {
            Slots::Conv { w, wq, kind, .. } | Slots::Linear { w, wq, kind, .. } => {
                let (rows, kdim) = (model.params[w].shape[0], model.params[w].shape[1]);
                let qn = format!("{name}.wq");
                if kind.param_count(rows) > 0 {
                    model.params[wq].data =
                        read_f32(&tensor(&qn)?, &qn, &[kind.param_count(rows)])?;
                    if model.params[wq].data.iter().any(|&v| v <= 0.0) {
                        return invalid(format!("{qn}: quantizer parameters must be positive"));
                    }
                    expected.push(qn);
                }
                let prec = match &op {
                    Op::Conv { prec, .. } | Op::Linear { prec, .. } => *prec,
                    _ => unreachable!(),
                };
                if kind == WeightQuant::None {
                    let wn = format!("{name}.weight");
                    model.params[w].data = read_f32(&tensor(&wn)?, &wn, &[rows, kdim])?;
                    expected.push(wn);
                } else {
                    let (cn, sn) = (format!("{name}.codes"), format!("{name}.scale"));
                    let scale = read_f32(&tensor(&sn)?, &sn, &[rows])?;
                    if scale.iter().any(|&s| s <= 0.0) {
                        return invalid(format!("{sn}: scales must be positive"));
                    }
                    let cv = tensor(&cn)?;
                    let (dt, rb) = match prec {
                        Precision::Int4 => (Dtype::U8, pack::row_bytes_4bit(kdim)),
                        _ => (Dtype::I8, pack::row_bytes_8bit(kdim)),
                    };
                    if cv.dtype() != dt || cv.shape() != [rows, rb] {
                        return invalid(format!(
                            "{cn}: expected {dt:?} [{rows}, {rb}], found {:?} {:?}",
                            cv.dtype(),
                            cv.shape()
                        ));
                    }
                    let data = cv.data();
                    let mut codes = Vec::with_capacity(rows * kdim);
                    let mut latent = Vec::with_capacity(rows * kdim);
                    for r in 0..rows {
                        let row = &data[r * rb..(r + 1) * rb];
                        let padded = if prec == Precision::Int4 { rb * 2 } else { rb };
                        for j in 0..padded {
                            let c = if prec == Precision::Int4 {
                                pack::get_s4(row, j)
                            } else {
                                row[j] as i8
                            };
                            if j < kdim {
                                codes.push(c);
                                latent.push(c as f32 * scale[r]);
                            } else if c != 0 {
                                return invalid(format!("{cn}: row {r} has non-zero padding"));
                            }
                        }
                    }
                    model.params[w].data = latent;
                    // The stored codes and scales must be what the quantizer gives back.
                    let q =
                        weight::quantize(kind, &model.params[wq].data, &model.params[w].data, rows);
                    if q.scale != scale {
                        return invalid(format!(
                            "{sn}: scales disagree with the quantizer parameters"
                        ));
                    }
                    if q.codes != codes {
                        return invalid(format!(
                            "{cn}: codes outside the quantizer's range for their scales"
                        ));
                    }
                    expected.push(cn);
                    expected.push(sn);
                }
                if let Slots::Linear { b, .. } = model.slots[i] {
                    let bn = format!("{name}.bias");
                    model.params[b].data = read_f32(&tensor(&bn)?, &bn, &[rows])?;
                    expected.push(bn);
                }
            }
            Slots::Bn {
                gamma,
                beta,
                mean,
                var,
            } => {
                let c = model.params[gamma].data.len();
                for (is_param, idx) in [(true, gamma), (true, beta), (false, mean), (false, var)] {
                    let t = if is_param {
                        &mut model.params[idx]
                    } else {
                        &mut model.buffers[idx]
                    };
                    t.data = read_f32(&tensor(&t.name)?, &t.name, &[c])?;
                    expected.push(t.name.clone());
                }
                if model.buffers[var].data.iter().any(|&v| v < 0.0) {
                    return invalid(format!("{name}.running_var: negative variance"));
                }
            }
            Slots::Act { q } => {
                let t = &mut model.params[q];
                if !t.data.is_empty() {
                    let n = t.data.len();
                    t.data = read_f32(&tensor(&t.name)?, &t.name, &[n])?;
                    if t.data[0] <= 0.0 {
                        return invalid(format!("{}: activation range must be positive", t.name));
                    }
                    expected.push(t.name.clone());
                }
            }
            Slots::None => {}
        }
    }
    if st.len() != expected.len() {
        let extra: Vec<&str> = st
            .names()
            .into_iter()
            .filter(|n| !expected.iter().any(|e| e == n))
            .collect();
        return invalid(format!("unexpected tensors: {}", extra.join(", ")));
    }
    Ok(model)
}
