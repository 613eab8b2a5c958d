//! The naming convention between qmul's tensors and a PyTorch state dict,
//! and the convolution weight layout.
//!
//! | qmul layer | PyTorch module |
//! |---|---|
//! | `stem.conv`, `stem.bn`, `stem.act` | `conv1`, `bn1`, `act1` |
//! | `layerS.J.1.conv`, `.1.bn`, `.1.act` | `layerS.J.conv1`, `.bn1`, `.act1` |
//! | `layerS.J.2.conv`, `.2.bn` | `layerS.J.conv2`, `.bn2` |
//! | `layerS.J.down.conv`, `.down.bn` | `layerS.J.downsample.0`, `.downsample.1` |
//! | `layerS.J.out.act` | `layerS.J.act2` |
//! | `fc` | `fc` |
//!
//! Leaves: convolution and linear `weight` (PyTorch `(cout, cin, kh, kw)`,
//! qmul `(cout, kh * kw * cin)` rows in `(ky, kx, c)` order), `bias`, `wq`
//! (weight-quantizer parameters: LSQ steps `[cout]`, DSQ `[u_0..u_{cout-1},
//! alpha]`; none under max-abs); BatchNorm `weight`/`bias` are qmul's
//! `gamma`/`beta`, `running_mean`, `running_var` (PyTorch's
//! `num_batches_tracked` has no counterpart and is not written); activation
//! quantizers `q` (PACT `[a]`, LSQ `[s]`, DSQ `[u, alpha]`; none under `none`).

use qmul_runtime::graph::Op;
use qmul_runtime::model::{Model, Slots};

/// PyTorch module name of a qmul layer, `None` if the convention has none.
pub fn torch_layer(layer: &str) -> Option<String> {
    match layer {
        "stem.conv" => return Some("conv1".into()),
        "stem.bn" => return Some("bn1".into()),
        "stem.act" => return Some("act1".into()),
        "fc" => return Some("fc".into()),
        _ => {}
    }
    let mut it = layer.splitn(3, '.');
    let (stage, block, part) = (it.next()?, it.next()?, it.next()?);
    let s: usize = stage.strip_prefix("layer")?.parse().ok()?;
    let _: usize = block.parse().ok()?;
    if !(1..=4).contains(&s) {
        return None;
    }
    let module = match part {
        "1.conv" => "conv1",
        "1.bn" => "bn1",
        "1.act" => "act1",
        "2.conv" => "conv2",
        "2.bn" => "bn2",
        "down.conv" => "downsample.0",
        "down.bn" => "downsample.1",
        "out.act" => "act2",
        _ => return None,
    };
    Some(format!("{stage}.{block}.{module}"))
}

/// PyTorch name of a qmul tensor (`layer.leaf`).
pub fn torch_name(qmul: &str) -> Option<String> {
    let (layer, leaf) = qmul.rsplit_once('.')?;
    let leaf = match leaf {
        "gamma" => "weight",
        "beta" => "bias",
        "weight" | "bias" | "wq" | "q" | "running_mean" | "running_var" => leaf,
        _ => return None,
    };
    Some(format!("{}.{leaf}", torch_layer(layer)?))
}

/// Where a tensor lives in a [`Model`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    Param(usize),
    Buffer(usize),
}

/// One tensor of the checkpoint.
#[derive(Clone, Debug)]
pub struct Entry {
    pub place: Place,
    /// qmul's name (`layer1.0.1.conv.weight`).
    pub qmul: String,
    /// PyTorch's name (`layer1.0.conv1.weight`).
    pub torch: String,
    /// PyTorch's shape.
    pub shape: Vec<usize>,
    /// `(cout, k, cin)` for a convolution weight, whose layout differs.
    pub conv: Option<(usize, usize, usize)>,
}

/// Every non-empty tensor of `model` with its PyTorch name and shape, in the
/// model's order; an error names the first tensor the convention cannot name.
pub fn entries(model: &Model) -> Result<Vec<Entry>, String> {
    let mut conv_of = vec![None; model.params.len()];
    for (slot, op) in model.slots.iter().zip(&model.graph.nodes) {
        if let (Slots::Conv { w, cin, .. }, Op::Conv { cout, k, .. }) = (slot, op) {
            conv_of[*w] = Some((*cout, *k, *cin));
        }
    }
    let mut out = Vec::new();
    let tensors = model
        .params
        .iter()
        .enumerate()
        .map(|(i, t)| (Place::Param(i), t))
        .chain(
            model
                .buffers
                .iter()
                .enumerate()
                .map(|(i, t)| (Place::Buffer(i), t)),
        );
    for (place, t) in tensors {
        if t.data.is_empty() {
            continue;
        }
        let torch = torch_name(&t.name).ok_or_else(|| {
            format!(
                "tensor '{}' has no PyTorch name: only qmul's ResNets convert",
                t.name
            )
        })?;
        let conv = match place {
            Place::Param(i) => conv_of[i],
            Place::Buffer(_) => None,
        };
        let shape = match conv {
            Some((cout, k, cin)) => vec![cout, cin, k, k],
            None => t.shape.clone(),
        };
        out.push(Entry {
            place,
            qmul: t.name.clone(),
            torch,
            shape,
            conv,
        });
    }
    Ok(out)
}

/// qmul's rows `(cout, k * k * cin)` in `(ky, kx, c)` order from PyTorch's
/// `(cout, cin, k, k)`.
pub fn torch_to_rows(t: &[f32], cout: usize, k: usize, cin: usize) -> Vec<f32> {
    let mut rows = vec![0.0; t.len()];
    for o in 0..cout {
        for c in 0..cin {
            for y in 0..k {
                for x in 0..k {
                    rows[((o * k + y) * k + x) * cin + c] = t[((o * cin + c) * k + y) * k + x];
                }
            }
        }
    }
    rows
}

/// PyTorch's `(cout, cin, k, k)` from qmul's rows.
pub fn rows_to_torch(rows: &[f32], cout: usize, k: usize, cin: usize) -> Vec<f32> {
    let mut t = vec![0.0; rows.len()];
    for o in 0..cout {
        for c in 0..cin {
            for y in 0..k {
                for x in 0..k {
                    t[((o * cin + c) * k + y) * k + x] = rows[((o * k + y) * k + x) * cin + c];
                }
            }
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_torchvision_convention() {
        for (q, t) in [
            ("stem.conv.weight", "conv1.weight"),
            ("stem.bn.gamma", "bn1.weight"),
            ("stem.bn.beta", "bn1.bias"),
            ("stem.act.q", "act1.q"),
            ("layer1.0.1.conv.weight", "layer1.0.conv1.weight"),
            ("layer2.0.down.conv.wq", "layer2.0.downsample.0.wq"),
            (
                "layer2.0.down.bn.running_var",
                "layer2.0.downsample.1.running_var",
            ),
            ("layer4.1.out.act.q", "layer4.1.act2.q"),
            ("fc.bias", "fc.bias"),
        ] {
            assert_eq!(torch_name(q).as_deref(), Some(t), "{q}");
        }
        assert_eq!(torch_name("layer5.0.1.conv.weight"), None);
        assert_eq!(torch_name("stem.conv.codes"), None);
        assert_eq!(torch_name("head.weight"), None);
    }

    #[test]
    fn conv_layouts_invert_each_other() {
        let (cout, k, cin) = (3, 3, 2);
        let t: Vec<f32> = (0..cout * k * k * cin).map(|i| i as f32).collect();
        let rows = torch_to_rows(&t, cout, k, cin);
        assert_eq!(rows_to_torch(&rows, cout, k, cin), t);
        // Row 0 holds tap (0, 0) of both input channels first.
        assert_eq!(&rows[..2], &[t[0], t[9]]);
    }
}
