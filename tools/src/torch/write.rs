//! A qmul [`Model`] into a PyTorch checkpoint (safetensors) that
//! `qmul_torch.load` opens and `qmul convert --from-torch` turns back into
//! the same `.qmul` file, byte for byte.
//!
//! The tensors are what the model holds: latent weights as the `.qmul` file
//! gave them back (codes and scales with the file's sub-bin residuals, or
//! the exact latent weights), quantizer parameters, BatchNorm parameters and
//! running statistics. The metadata describes the architecture for
//! `qmul_torch.load` and carries the model's `info` and its latent state
//! (`qmul_latent`) for the way back.

use super::names::{self, Place};
use super::{LatentState, FORMAT, FORMAT_VERSION, INPUT};
use qmul_models::{resnet, ResNetConfig};
use qmul_runtime::graph::{Op, Precision};
use qmul_runtime::model::Model;
use qmul_runtime::model_file::write::{serialize, Out};
use safetensors::tensor::Dtype;
use std::collections::BTreeMap;
use std::path::Path;

/// The ResNet configuration `model`'s graph was built from; an error if
/// `qmul_models::resnet` does not rebuild exactly that graph.
pub fn config_of(model: &Model) -> Result<ResNetConfig, String> {
    let g = &model.graph;
    let Some(Op::Input { h, w, c }) = g.nodes.first() else {
        return Err("the graph has no input node".into());
    };
    let (width, edge) = g
        .nodes
        .iter()
        .find_map(|op| match op {
            Op::Conv {
                name, cout, prec, ..
            } if name == "stem.conv" => Some((*cout, *prec)),
            _ => None,
        })
        .ok_or("the graph has no 'stem.conv': only qmul's ResNets convert")?;
    let mut blocks = [0usize; 4];
    for op in &g.nodes {
        if let Some(rest) = op.name().and_then(|n| n.strip_prefix("layer")) {
            let mut it = rest.split('.');
            if let (Some(Ok(s)), Some(Ok(j))) = (
                it.next().map(str::parse::<usize>),
                it.next().map(str::parse::<usize>),
            ) {
                if (1..=4).contains(&s) {
                    blocks[s - 1] = blocks[s - 1].max(j + 1);
                }
            }
        }
    }
    let mut cfg = ResNetConfig::resnet18(width, *h, *w, *c, g.classes, g.scheme);
    cfg.blocks = blocks;
    // Under `none` every layer is f32 whatever the configuration says.
    if g.scheme != qmul_runtime::QuantScheme::None {
        cfg.edge_precision = edge;
    }
    match resnet(&cfg) {
        Ok(rebuilt) if rebuilt == *g => Ok(cfg),
        _ => Err(
            "the model's graph is not one of qmul's CIFAR-style ResNets (qmul_models::resnet), \
             which is what qmul_torch.QResNet18 defines"
                .into(),
        ),
    }
}

/// The bytes of the PyTorch checkpoint of `model`; `latent` is the state its
/// `.qmul` file had (recorded for the way back).
pub fn to_torch_bytes(model: &Model, latent: LatentState) -> Result<Vec<u8>, String> {
    let cfg = config_of(model)?;
    let mut tensors = BTreeMap::new();
    for e in names::entries(model)? {
        let t = match e.place {
            Place::Param(i) => &model.params[i],
            Place::Buffer(i) => &model.buffers[i],
        };
        let data = match e.conv {
            Some((cout, k, cin)) => names::rows_to_torch(&t.data, cout, k, cin),
            None => t.data.clone(),
        };
        let bytes = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        tensors.insert(e.torch, Out(Dtype::F32, e.shape, bytes));
    }
    let quantized = model.graph.scheme != qmul_runtime::QuantScheme::None;
    let b = cfg.blocks;
    let mut meta: BTreeMap<&str, String> = BTreeMap::new();
    meta.insert("format", FORMAT.into());
    meta.insert("format_version", FORMAT_VERSION.into());
    meta.insert(
        "arch",
        if b == [2, 2, 2, 2] {
            "resnet18"
        } else {
            "resnet"
        }
        .into(),
    );
    meta.insert("blocks", format!("{},{},{},{}", b[0], b[1], b[2], b[3]));
    meta.insert("width", cfg.width.to_string());
    meta.insert("in_channels", cfg.in_c.to_string());
    meta.insert("classes", cfg.classes.to_string());
    meta.insert("input_h", cfg.in_h.to_string());
    meta.insert("input_w", cfg.in_w.to_string());
    meta.insert("scheme", cfg.scheme.name().into());
    meta.insert(
        "edge_precision",
        match (quantized, cfg.edge_precision) {
            (true, Precision::Int8) => "int8",
            (true, Precision::Int4) => "int4",
            _ => "f32",
        }
        .into(),
    );
    meta.insert("input", INPUT.into());
    meta.insert(
        "info",
        serde_json::to_string(&model.info).map_err(|e| e.to_string())?,
    );
    meta.insert("qmul_latent", latent.name().into());
    Ok(serialize(&meta, &tensors))
}

/// Writes the checkpoint of `model` to `path` (crash-safe replacement).
pub fn to_torch(model: &Model, latent: LatentState, path: &Path) -> Result<(), String> {
    let bytes = to_torch_bytes(model, latent)?;
    qmul_runtime::model_file::write_atomic(path, &bytes)
        .map_err(|e| format!("{}: {e}", path.display()))
}
