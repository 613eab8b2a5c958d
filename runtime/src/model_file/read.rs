//! Reading a `.qmul` file: every byte is checked before it is trusted.
//!
//! In order, before anything is allocated from what the file says:
//! 1. the header's length against the file, its JSON for repeated keys (the
//!    parsers keep the last of two equal keys), then the safetensors crate's
//!    own checks (offsets in bounds, no overlaps, each tensor's byte length
//!    equal to its dtype times its shape);
//! 2. the metadata: format and version, the data checksum (version 2), and
//!    `scheme`, `nibble_order` and `input` agreeing with the graph and this
//!    build;
//! 3. the graph: node count, depth and every shape bounded and consistent
//!    ([`Graph::shapes`]);
//! 4. the list of tensors the graph needs, with names, dtypes and shapes
//!    computed with checked arithmetic, against the file's tensors: each must be
//!    there with exactly that dtype and shape, and nothing else may be. Only
//!    then is a model allocated, so its size is bounded by the file's;
//! 5. the values: floats finite, scales positive, variances non-negative,
//!    quantizer parameters inside their valid ranges (DSQ's alpha in (0, 0.5)),
//!    padding nibbles zero, and codes that requantize exactly from the
//!    dequantized weights.
//!
//! A bad file is an error that says what is wrong, never a panic.

use super::json::check_unique_keys;
use super::write::hex;
use super::{invalid, ModelFileError, FORMAT, INPUT, NIBBLE_ORDER};
use crate::graph::{Graph, Op, Precision, Shape};
use crate::model::{Model, Slots};
use crate::quant::weight::{self, WeightQuant};
use crate::quant::{act, sub_bin};
use qmul_kernels::pack;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashSet};

/// Largest header accepted (the shipped width-16 ResNet-18's is about 12 KB).
pub const MAX_HEADER_BYTES: usize = 4 << 20;

/// What loading verified about the file's integrity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Integrity {
    /// The tensor data matched the stored SHA-256.
    Verified,
    /// A version-1 file: it carries no checksum, so a flipped bit in its
    /// weights cannot be detected. Saving it again adds one.
    Unchecked,
}

/// A loaded model with the facts about its file.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub model: Model,
    pub integrity: Integrity,
    /// SHA-256 of the whole file (the model's identity in deletion receipts).
    pub file_sha256: [u8; 32],
    pub format_version: u32,
    pub file_bytes: usize,
    /// The file keeps each quantized weight's position inside its rounding
    /// bin (see [`crate::quant::sub_bin`]); without it every latent weight
    /// loads at its bin's centre.
    pub sub_bin: bool,
    /// The file keeps the exact f32 latent weights (format version 4); then
    /// `sub_bin` is true too and the model's `exact_latent` is set.
    pub exact_latent: bool,
}

/// Name suffix of the sub-bin residual tensors.
const RESIDUAL: &str = ".residual";
/// Name suffix of the exact latent weights (format version 4).
const LATENT: &str = ".latent";

/// What a file keeps of the latent weights beyond codes and scales.
#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Centres,
    Residuals,
    Exact,
}

/// Parses and validates the bytes of a `.qmul` file.
pub fn from_bytes(bytes: &[u8]) -> Result<Model, ModelFileError> {
    Ok(from_bytes_checked(bytes)?.model)
}

/// The header's JSON text, after checking its length against the file.
fn header_text(bytes: &[u8]) -> Result<&str, ModelFileError> {
    let Some(len) = bytes.get(..8) else {
        return invalid(format!("{} bytes: too short for a header", bytes.len()));
    };
    let mut l = [0u8; 8];
    l.copy_from_slice(len);
    let n = u64::from_le_bytes(l);
    if n > MAX_HEADER_BYTES as u64 || n > (bytes.len() - 8) as u64 {
        return invalid(format!(
            "header length {n} exceeds the file ({} bytes) or the {MAX_HEADER_BYTES}-byte limit",
            bytes.len()
        ));
    }
    std::str::from_utf8(&bytes[8..8 + n as usize])
        .map_err(|_| ModelFileError::Invalid("header is not UTF-8".into()))
}

/// Parses and validates the bytes of a `.qmul` file, saying what was verified.
pub fn from_bytes_checked(bytes: &[u8]) -> Result<Loaded, ModelFileError> {
    let header = header_text(bytes)?;
    check_unique_keys(header).map_err(|e| ModelFileError::Invalid(format!("header: {e}")))?;
    let data_start = 8 + header.len();
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| ModelFileError::Invalid(format!("container: {e}")))?;
    let (_, meta) = SafeTensors::read_metadata(bytes)
        .map_err(|e| ModelFileError::Invalid(format!("container: {e}")))?;
    let md = meta.metadata().clone().unwrap_or_default();
    let get = |k: &str| {
        md.get(k)
            .map(String::as_str)
            .ok_or_else(|| ModelFileError::Invalid(format!("metadata '{k}' missing")))
    };
    if get("format")? != FORMAT {
        return invalid("not a qmul model (metadata 'format')");
    }
    let version: u32 = match get("format_version")? {
        "1" => 1,
        "2" => 2,
        "3" => 3,
        "4" => 4,
        v => {
            return invalid(format!(
                "unsupported format_version {v} (this build reads 1 to 4)"
            ))
        }
    };
    let integrity = if version >= 2 {
        let want = get("data_sha256")?;
        let got = hex(&Sha256::digest(&bytes[data_start..]));
        if want != got {
            return Err(ModelFileError::Checksum(format!(
                "the tensor data's SHA-256 is {got}, the file says {want}: \
                 the file was damaged after it was written"
            )));
        }
        Integrity::Verified
    } else {
        Integrity::Unchecked
    };
    let graph_text = get("graph")?;
    check_unique_keys(graph_text).map_err(|e| ModelFileError::Invalid(format!("graph: {e}")))?;
    let graph: Graph = serde_json::from_str(graph_text)
        .map_err(|e| ModelFileError::Invalid(format!("graph: {e}")))?;
    for (key, want) in [
        ("scheme", graph.scheme.name()),
        ("nibble_order", NIBBLE_ORDER),
        ("input", INPUT),
    ] {
        let got = get(key)?;
        if got != want {
            return invalid(format!(
                "metadata '{key}' is \"{got}\" but the graph and this build use \"{want}\""
            ));
        }
    }
    let info: BTreeMap<String, String> = match md.get("info") {
        Some(s) => {
            check_unique_keys(s).map_err(|e| ModelFileError::Invalid(format!("info: {e}")))?;
            serde_json::from_str(s).map_err(|e| ModelFileError::Invalid(format!("info: {e}")))?
        }
        None => BTreeMap::new(),
    };
    let shapes = graph
        .shapes()
        .map_err(|e| ModelFileError::Invalid(e.to_string()))?;
    let residuals = st.names().iter().any(|n| n.ends_with(RESIDUAL));
    let exact = st.names().iter().any(|n| n.ends_with(LATENT));
    if residuals && version < 3 {
        return invalid(format!(
            "residual tensors need format_version 3, the file says {version}"
        ));
    }
    if exact && version < 4 {
        return invalid(format!(
            "latent tensors need format_version 4, the file says {version}"
        ));
    }
    let state = match (residuals, exact) {
        (false, false) => State::Centres,
        (true, false) => State::Residuals,
        (false, true) => State::Exact,
        (true, true) => return invalid("the file has both residual and latent tensors"),
    };
    check_tensor_list(&st, &expected_tensors(&graph, &shapes, state)?)?;
    let mut model = Model::layout(graph).map_err(|e| ModelFileError::Invalid(e.to_string()))?;
    model.info = info;
    model.exact_latent = exact;
    fill(&mut model, &st, state)?;
    Ok(Loaded {
        model,
        integrity,
        sub_bin: state != State::Centres,
        exact_latent: exact,
        file_sha256: Sha256::digest(bytes).into(),
        format_version: version,
        file_bytes: bytes.len(),
    })
}

/// A tensor the graph requires: name, dtype, shape.
struct Expected {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
}

fn mul(a: usize, b: usize) -> Result<usize, ModelFileError> {
    a.checked_mul(b)
        .ok_or_else(|| ModelFileError::Invalid(format!("tensor size {a} x {b} overflows")))
}

/// Every tensor the graph needs, computed from the graph alone.
fn expected_tensors(
    graph: &Graph,
    shapes: &[Shape],
    state: State,
) -> Result<Vec<Expected>, ModelFileError> {
    let scheme = graph.scheme;
    let mut out = Vec::new();
    let f32t = |name: String, n: usize| Expected {
        name,
        dtype: Dtype::F32,
        shape: vec![n],
    };
    let layer = |name: &str, cout: usize, kdim: usize, prec: Precision| {
        let kind = WeightQuant::of(scheme, prec);
        let mut v = Vec::new();
        if kind.param_count(cout) > 0 {
            v.push(f32t(format!("{name}.wq"), kind.param_count(cout)));
        }
        if kind == WeightQuant::None {
            mul(cout, kdim)?;
            v.push(Expected {
                name: format!("{name}.weight"),
                dtype: Dtype::F32,
                shape: vec![cout, kdim],
            });
        } else {
            let (dtype, rb) = match prec {
                Precision::Int4 => (Dtype::U8, pack::row_bytes_4bit(kdim)),
                _ => (Dtype::I8, pack::row_bytes_8bit(kdim)),
            };
            mul(cout, rb)?;
            v.push(Expected {
                name: format!("{name}.codes"),
                dtype,
                shape: vec![cout, rb],
            });
            v.push(f32t(format!("{name}.scale"), cout));
            match state {
                State::Centres => {}
                State::Residuals => v.push(Expected {
                    name: format!("{name}{RESIDUAL}"),
                    dtype: Dtype::I16,
                    shape: vec![cout, kdim],
                }),
                State::Exact => v.push(Expected {
                    name: format!("{name}{LATENT}"),
                    dtype: Dtype::F32,
                    shape: vec![cout, kdim],
                }),
            }
        }
        Ok::<_, ModelFileError>(v)
    };
    for op in &graph.nodes {
        match op {
            Op::Conv {
                name,
                input,
                cout,
                k,
                prec,
                ..
            } => {
                let kdim = mul(mul(*k, *k)?, shapes[*input].c)?;
                out.extend(layer(name, *cout, kdim, *prec)?);
            }
            Op::Linear {
                name,
                input,
                out: cout,
                prec,
            } => {
                out.extend(layer(name, *cout, shapes[*input].len(), *prec)?);
                out.push(f32t(format!("{name}.bias"), *cout));
            }
            Op::BatchNorm { name, input } => {
                let c = shapes[*input].c;
                for s in ["gamma", "beta", "running_mean", "running_var"] {
                    out.push(f32t(format!("{name}.{s}"), c));
                }
            }
            Op::Act { name, .. } => {
                let n = act::param_count(scheme);
                if n > 0 {
                    out.push(f32t(format!("{name}.q"), n));
                }
            }
            Op::Input { .. } | Op::Add { .. } | Op::GlobalAvgPool { .. } => {}
        }
    }
    Ok(out)
}

/// The file must hold exactly the expected tensors, each with its dtype and
/// shape (whose byte length the container parser already checked against the
/// data block), before any model memory is allocated.
fn check_tensor_list(st: &SafeTensors, expected: &[Expected]) -> Result<(), ModelFileError> {
    let mut names = HashSet::new();
    for e in expected {
        if !names.insert(e.name.as_str()) {
            return invalid(format!("the graph names tensor '{}' twice", e.name));
        }
        let v = st
            .tensor(&e.name)
            .map_err(|_| ModelFileError::Invalid(format!("tensor '{}' missing", e.name)))?;
        if v.dtype() != e.dtype || v.shape() != e.shape.as_slice() {
            return invalid(format!(
                "{}: expected {:?} {:?}, found {:?} {:?}",
                e.name,
                e.dtype,
                e.shape,
                v.dtype(),
                v.shape()
            ));
        }
    }
    if st.len() != expected.len() {
        let mut extra: Vec<String> = st
            .names()
            .into_iter()
            .filter(|n| !names.contains(*n))
            .map(str::to_string)
            .collect();
        extra.sort();
        return invalid(format!("unexpected tensors: {}", extra.join(", ")));
    }
    Ok(())
}

fn read_f32(v: &TensorView, name: &str) -> Result<Vec<f32>, ModelFileError> {
    let data: Vec<f32> = v
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    if let Some(x) = data.iter().find(|x| !x.is_finite()) {
        return invalid(format!("{name}: non-finite value {x}"));
    }
    Ok(data)
}

/// Quantizer parameters must already lie in the range training keeps them in
/// (positive steps and clips, DSQ's alpha in (0, 0.5)).
fn check_range(name: &str, q: &[f32], clamp: impl Fn(&mut [f32])) -> Result<(), ModelFileError> {
    let mut c = q.to_vec();
    clamp(&mut c);
    if let Some((i, (&got, &ok))) = q.iter().zip(&c).enumerate().find(|(_, (a, b))| a != b) {
        return invalid(format!(
            "{name}[{i}] = {got} is outside the quantizer's valid range (nearest valid: {ok})"
        ));
    }
    Ok(())
}

/// Fills the allocated model from the (already listed and shape-checked) tensors.
fn fill(model: &mut Model, st: &SafeTensors, state: State) -> Result<(), ModelFileError> {
    let sub_bin = state != State::Centres;
    let tensor = |name: &str| {
        st.tensor(name)
            .map_err(|_| ModelFileError::Invalid(format!("tensor '{name}' missing")))
    };
    let scheme = model.graph.scheme;
    for i in 0..model.graph.nodes.len() {
        let name = model.graph.nodes[i].name().unwrap_or_default().to_string();
        let prec = match &model.graph.nodes[i] {
            Op::Conv { prec, .. } | Op::Linear { prec, .. } => *prec,
            _ => Precision::F32,
        };
        match model.slots[i].clone() {
            Slots::Conv { w, wq, kind, .. } | Slots::Linear { w, wq, kind, .. } => {
                let (rows, kdim) = (model.params[w].shape[0], model.params[w].shape[1]);
                if kind.param_count(rows) > 0 {
                    let qn = format!("{name}.wq");
                    let q = read_f32(&tensor(&qn)?, &qn)?;
                    check_range(&qn, &q, |c| weight::clamp_params(kind, c, rows))?;
                    model.params[wq].data = q;
                }
                if kind == WeightQuant::None {
                    let wn = format!("{name}.weight");
                    model.params[w].data = read_f32(&tensor(&wn)?, &wn)?;
                } else {
                    let (cn, sn) = (format!("{name}.codes"), format!("{name}.scale"));
                    let scale = read_f32(&tensor(&sn)?, &sn)?;
                    if scale.iter().any(|&s| s <= 0.0) {
                        return invalid(format!("{sn}: scales must be positive"));
                    }
                    let cv = tensor(&cn)?;
                    model.params[w].data =
                        dequantize_rows(&cn, cv.data(), prec, rows, kdim, &scale)?;
                    let codes = stored_codes(cv.data(), prec, rows, kdim);
                    if state == State::Exact {
                        let ln = format!("{name}{LATENT}");
                        model.params[w].data = read_f32(&tensor(&ln)?, &ln)?;
                    } else if sub_bin {
                        let rn = format!("{name}{RESIDUAL}");
                        let r: Vec<i16> = tensor(&rn)?
                            .data()
                            .chunks_exact(2)
                            .map(|b| i16::from_le_bytes([b[0], b[1]]))
                            .collect();
                        if r.contains(&i16::MIN) {
                            return invalid(format!(
                                "{rn}: residual -32768 is outside -{m}..={m}",
                                m = sub_bin::MAX_UNITS
                            ));
                        }
                        model.params[w].data = sub_bin::decode(&codes, &r, &scale);
                    }
                    // The stored codes and scales must be what the quantizer
                    // gives back (with the residuals, if any: a residual that
                    // would move a weight's code or a max-abs scale is caught here).
                    let q =
                        weight::quantize(kind, &model.params[wq].data, &model.params[w].data, rows);
                    if q.scale != scale {
                        return invalid(format!(
                            "{sn}: scales disagree with the quantizer parameters{}",
                            match state {
                                State::Centres => "",
                                State::Residuals => " and residuals",
                                State::Exact => " and latent weights",
                            }
                        ));
                    }
                    if q.codes != codes {
                        return invalid(if state == State::Exact {
                            format!("{cn}: the latent weights do not quantize to these codes")
                        } else {
                            format!("{cn}: codes outside the quantizer's range for their scales")
                        });
                    }
                }
                if let Slots::Linear { b, .. } = model.slots[i] {
                    let bn = format!("{name}.bias");
                    model.params[b].data = read_f32(&tensor(&bn)?, &bn)?;
                }
            }
            Slots::Bn {
                gamma,
                beta,
                mean,
                var,
            } => {
                for (is_param, idx) in [(true, gamma), (true, beta), (false, mean), (false, var)] {
                    let t = if is_param {
                        &mut model.params[idx]
                    } else {
                        &mut model.buffers[idx]
                    };
                    t.data = read_f32(&tensor(&t.name)?, &t.name)?;
                }
                if model.buffers[var].data.iter().any(|&v| v < 0.0) {
                    return invalid(format!("{name}.running_var: negative variance"));
                }
            }
            Slots::Act { q } => {
                let t = &mut model.params[q];
                if !t.data.is_empty() {
                    let data = read_f32(&tensor(&t.name)?, &t.name)?;
                    if data[0] <= 0.0 {
                        return invalid(format!("{}: activation range must be positive", t.name));
                    }
                    check_range(&t.name, &data, |c| act::clamp_params(scheme, c))?;
                    t.data = data;
                }
            }
            Slots::None => {}
        }
    }
    Ok(())
}

/// The codes of a stored weight tensor, without padding.
fn stored_codes(data: &[u8], prec: Precision, rows: usize, kdim: usize) -> Vec<i8> {
    let rb = data.len() / rows.max(1);
    let mut codes = Vec::with_capacity(rows * kdim);
    for r in 0..rows {
        let row = &data[r * rb..(r + 1) * rb];
        for j in 0..kdim {
            codes.push(if prec == Precision::Int4 {
                pack::get_s4(row, j)
            } else {
                row[j] as i8
            });
        }
    }
    codes
}

/// Latent weights `code * scale` of a stored tensor; padding codes must be 0.
fn dequantize_rows(
    name: &str,
    data: &[u8],
    prec: Precision,
    rows: usize,
    kdim: usize,
    scale: &[f32],
) -> Result<Vec<f32>, ModelFileError> {
    let rb = data.len() / rows.max(1);
    let padded = if prec == Precision::Int4 { rb * 2 } else { rb };
    let mut latent = Vec::with_capacity(rows * kdim);
    for r in 0..rows {
        let row = &data[r * rb..(r + 1) * rb];
        for j in 0..padded {
            let c = if prec == Precision::Int4 {
                pack::get_s4(row, j)
            } else {
                row[j] as i8
            };
            if j < kdim {
                latent.push(c as f32 * scale[r]);
            } else if c != 0 {
                return invalid(format!("{name}: row {r} has non-zero padding"));
            }
        }
    }
    Ok(latent)
}
