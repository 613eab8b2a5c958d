//! Serializing a model into the bytes of a `.qmul` file: deterministic (the same
//! model always gives the same bytes), with the data checksum in the metadata,
//! and never for a model that could not be loaded back (non-finite parameters
//! after a diverged run are an error here, not a file that fails later).

use super::{ModelFileError, FORMAT, FORMAT_VERSION, FORMAT_VERSION_EXACT, INPUT, NIBBLE_ORDER};
use crate::model::{Model, QWeights, Slots};
use crate::quant::sub_bin;
use crate::quant::weight::WeightQuant;
use safetensors::tensor::Dtype;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// One tensor to write: dtype, shape, little-endian bytes.
pub struct Out(pub Dtype, pub Vec<usize>, pub Vec<u8>);

fn unwritable<T>(m: String) -> Result<T, ModelFileError> {
    Err(ModelFileError::Unwritable(m))
}

/// Every parameter and buffer must be finite: a NaN or an infinity means the
/// run that produced the model diverged.
fn check_finite(model: &Model) -> Result<(), ModelFileError> {
    for t in model.params.iter().chain(&model.buffers) {
        if let Some(v) = t.data.iter().find(|v| !v.is_finite()) {
            return unwritable(format!(
                "{} holds {v}: the training or unlearning that produced it diverged \
                 (lower the learning rate)",
                t.name
            ));
        }
    }
    Ok(())
}

/// What a file keeps besides what inference needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteOptions {
    /// Each quantized weight's position inside its rounding bin
    /// (`{name}.residual`, see [`crate::quant::sub_bin`]), so that unlearning
    /// from the file starts where the last run left off. Inference ignores it.
    pub sub_bin: bool,
    /// The exact f32 latent weights instead (`{name}.latent`, format version
    /// 4; overrides `sub_bin`): what a conversion from PyTorch needs to give
    /// back every tensor bit for bit. Inference ignores them too.
    pub exact_latent: bool,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            sub_bin: true,
            exact_latent: false,
        }
    }
}

impl WriteOptions {
    /// Codes and scales only: every latent weight loads at its bin's centre.
    pub const CENTRES: WriteOptions = WriteOptions {
        sub_bin: false,
        exact_latent: false,
    };
}

/// Serializes a model into the bytes of a `.qmul` file, with its sub-bin state
/// (exact latent weights where the model keeps them, see [`Model::exact_latent`]).
pub fn to_bytes(model: &Model) -> Result<Vec<u8>, ModelFileError> {
    to_bytes_with(
        model,
        WriteOptions {
            exact_latent: model.exact_latent,
            ..WriteOptions::default()
        },
    )
}

/// Serializes a model into the bytes of a `.qmul` file.
pub fn to_bytes_with(model: &Model, opts: WriteOptions) -> Result<Vec<u8>, ModelFileError> {
    check_finite(model)?;
    let mut out: BTreeMap<String, Out> = BTreeMap::new();
    for (i, op) in model.graph.nodes.iter().enumerate() {
        let name = op.name().unwrap_or_default().to_string();
        match &model.slots[i] {
            Slots::Conv { w, wq, .. } | Slots::Linear { w, wq, .. } => {
                let rows = model.params[*w].shape[0];
                let (qw, codes) = match model
                    .quantize_layer(i)
                    .map_err(|e| ModelFileError::Unwritable(e.to_string()))?
                {
                    Some((qw, codes)) => (Some(qw), codes),
                    None => (None, None),
                };
                match &qw {
                    Some(QWeights::Int4 { packed, scale }) => {
                        out.insert(
                            format!("{name}.codes"),
                            Out(Dtype::U8, vec![rows, packed.len() / rows], packed.clone()),
                        );
                        out.insert(
                            format!("{name}.scale"),
                            Out(Dtype::F32, vec![rows], f32_bytes(scale)),
                        );
                    }
                    Some(QWeights::Int8 { rows: r, scale }) => {
                        out.insert(
                            format!("{name}.codes"),
                            Out(Dtype::I8, vec![rows, r.len() / rows], r.clone()),
                        );
                        out.insert(
                            format!("{name}.scale"),
                            Out(Dtype::F32, vec![rows], f32_bytes(scale)),
                        );
                    }
                    Some(QWeights::F32(wf)) => {
                        out.insert(
                            format!("{name}.weight"),
                            Out(Dtype::F32, model.params[*w].shape.clone(), f32_bytes(wf)),
                        );
                    }
                    None => return unwritable(format!("{name}: weights not quantized")),
                }
                let kind = match model.slots[i] {
                    Slots::Conv { kind, .. } | Slots::Linear { kind, .. } => kind,
                    _ => WeightQuant::None,
                };
                if let (true, Some(_)) = (opts.exact_latent, &codes) {
                    let wl = &model.params[*w];
                    out.insert(
                        format!("{name}.latent"),
                        Out(Dtype::F32, wl.shape.clone(), f32_bytes(&wl.data)),
                    );
                } else if let (true, Some(q)) = (opts.sub_bin, &codes) {
                    let wl = &model.params[*w];
                    let r = sub_bin::encode(kind, &wl.data, &q.codes, &q.scale);
                    out.insert(
                        format!("{name}.residual"),
                        Out(
                            Dtype::I16,
                            wl.shape.clone(),
                            r.iter().flat_map(|v| v.to_le_bytes()).collect(),
                        ),
                    );
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
    // Version 4 only where it is needed, so that every other file stays
    // readable by version-3 builds.
    let version = if opts.exact_latent && out.keys().any(|k| k.ends_with(".latent")) {
        FORMAT_VERSION_EXACT
    } else {
        FORMAT_VERSION
    };
    meta.insert("format_version", version.to_string());
    meta.insert("graph", to_json(&model.graph)?);
    meta.insert("scheme", model.graph.scheme.name().to_string());
    meta.insert("nibble_order", NIBBLE_ORDER.to_string());
    meta.insert("input", INPUT.to_string());
    meta.insert("info", to_json(&model.info)?);
    let mut digest = Sha256::new();
    for Out(_, _, bytes) in out.values() {
        digest.update(bytes);
    }
    meta.insert("data_sha256", hex(&digest.finalize()));
    Ok(serialize(&meta, &out))
}

/// Lowercase hexadecimal of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String, ModelFileError> {
    serde_json::to_string(v).map_err(|e| ModelFileError::Unwritable(e.to_string()))
}

/// Writes the safetensors container with keys in sorted order, so that the same
/// model always gives the same bytes (the safetensors crate's writer orders
/// `__metadata__` by hash). Reading goes through the crate's validating parser.
/// Also the writer of the PyTorch checkpoints `qmul convert` produces.
pub fn serialize(meta: &BTreeMap<&str, String>, tensors: &BTreeMap<String, Out>) -> Vec<u8> {
    // safetensors names its dtypes as the crate's variants print (`F32`, `I16`).
    let dtype = |d: &Dtype| format!("{d:?}");
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
