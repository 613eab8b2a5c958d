//! `qmul convert`: PyTorch checkpoints (safetensors, `tools/python/qmul_torch.py`'s
//! layout) to `.qmul` files and back (`crate::torch`).

use crate::torch::{self, read::parse_input, LatentState, ReadOptions};
use clap::Args;
use qmul_runtime::model_file;
use qmul_runtime::quant::weight;
use qmul_runtime::QuantScheme;
use std::path::PathBuf;

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("direction").required(true).args(["from_torch", "to_torch"])))]
pub struct ConvertArgs {
    /// A PyTorch checkpoint (.safetensors) to convert into a .qmul model.
    #[arg(long, value_name = "FILE.safetensors")]
    pub from_torch: Option<PathBuf>,
    /// A .qmul model to convert into a PyTorch checkpoint.
    #[arg(long, value_name = "FILE.qmul")]
    pub to_torch: Option<PathBuf>,
    /// Where to write the result.
    #[arg(long)]
    pub out: PathBuf,
    /// Quantization scheme (pact, lsq, dsq, none), for a checkpoint without
    /// qmul-torch metadata.
    #[arg(long)]
    pub scheme: Option<String>,
    /// Input size HxW, for a checkpoint without qmul-torch metadata.
    #[arg(long)]
    pub input: Option<String>,
    /// How the .qmul file keeps the latent weights: `sub-bin` (1/65536-step
    /// residuals beside the codes: the deployable file), `exact` (the f32
    /// latent weights: the checkpoint comes back bit for bit) or `centres`
    /// (codes only). Default: what the checkpoint's metadata records, else sub-bin.
    #[arg(long)]
    pub latent: Option<String>,
}

pub fn convert(a: ConvertArgs) -> Result<(), String> {
    match (&a.from_torch, &a.to_torch) {
        (Some(src), None) => from_torch(&a, src),
        (None, Some(src)) => {
            if a.scheme.is_some() || a.input.is_some() || a.latent.is_some() {
                return Err(
                    "--scheme, --input and --latent apply to --from-torch; a .qmul file \
                     describes itself"
                        .into(),
                );
            }
            let loaded =
                model_file::load_checked(src).map_err(|e| format!("{}: {e}", src.display()))?;
            let state = LatentState::of_file(&loaded);
            torch::to_torch(&loaded.model, state, &a.out)?;
            println!(
                "{} ({}, latent weights: {}) -> {} ({} tensors, PyTorch layout)",
                src.display(),
                loaded.model.scheme().name(),
                state.name(),
                a.out.display(),
                torch::names::entries(&loaded.model)?.len()
            );
            Ok(())
        }
        _ => Err("give one of --from-torch or --to-torch".into()),
    }
}

fn from_torch(a: &ConvertArgs, src: &std::path::Path) -> Result<(), String> {
    let opts = ReadOptions {
        scheme: a
            .scheme
            .as_deref()
            .map(|s| {
                QuantScheme::parse(s)
                    .ok_or_else(|| format!("--scheme '{s}': expected pact, lsq, dsq or none"))
            })
            .transpose()?,
        input: a.input.as_deref().map(parse_input).transpose()?,
        latent: a
            .latent
            .as_deref()
            .map(|s| {
                LatentState::parse(s)
                    .ok_or_else(|| format!("--latent '{s}': expected sub-bin, exact or centres"))
            })
            .transpose()?,
        input_fallback: None,
    };
    let c = torch::from_torch(src, &opts)?;
    let bytes = model_file::to_bytes_with(&c.model, c.latent.write_options())
        .map_err(|e| format!("{}: {e}", src.display()))?;
    let back = model_file::from_bytes(&bytes)
        .map_err(|e| format!("the converted model does not load back: {e}"))?;
    model_file::write_atomic(&a.out, &bytes).map_err(|e| format!("{}: {e}", a.out.display()))?;
    println!(
        "{} ({}) -> {} ({} bytes, latent weights: {}; {})",
        src.display(),
        c.description,
        a.out.display(),
        bytes.len(),
        c.latent.name(),
        latent_error(&c.model, &back)
    );
    Ok(())
}

/// How far the `.qmul` file's latent weights are from the checkpoint's, in
/// quantization steps (the figure behind `--latent`): apart, the weights at
/// a max-abs channel's largest code, which come back on `qmax * scale`, and
/// the weights an LSQ/DSQ quantizer clips (more than half a step beyond its
/// range), which keep half a step of their excess (`quant::sub_bin`).
fn latent_error(exact: &qmul_runtime::Model, back: &qmul_runtime::Model) -> String {
    use qmul_runtime::model::Slots;
    let (mut worst, mut top, mut clipped) = (0.0f64, 0.0f64, 0usize);
    let mut quantized = false;
    for slot in &exact.slots {
        let (w, wq, kind) = match slot {
            Slots::Conv { w, wq, kind, .. } | Slots::Linear { w, wq, kind, .. } => (*w, *wq, *kind),
            _ => continue,
        };
        if kind == weight::WeightQuant::None {
            continue;
        }
        quantized = true;
        let rows = exact.params[w].shape[0];
        let q = weight::quantize(kind, &exact.params[wq].data, &exact.params[w].data, rows);
        let k = exact.params[w].data.len() / rows.max(1);
        let qmax = match kind {
            weight::WeightQuant::MaxAbs { qmax } => Some(qmax),
            _ => None,
        };
        for (j, (a, b)) in exact.params[w]
            .data
            .iter()
            .zip(&back.params[w].data)
            .enumerate()
        {
            let s = q.scale[j / k.max(1)] as f64;
            let d = ((*a as f64) - (*b as f64)).abs() / s;
            if (*a as f64 / s - q.codes[j] as f64).abs() > 0.5 {
                clipped += 1;
            } else if qmax == Some((q.codes[j] as f32).abs()) {
                top = top.max(d);
            } else {
                worst = worst.max(d);
            }
        }
    }
    if !quantized {
        "f32 weights, stored exactly".into()
    } else if worst == 0.0 && top == 0.0 {
        "every latent weight stored exactly".into()
    } else {
        let mut m = format!(
            "latent weights within {worst:.2e} of a quantization step of the checkpoint's, \
             {top:.2e} at max-abs channels' largest codes"
        );
        if clipped > 0 {
            m += &format!(
                "; {clipped} weights clipped by their quantizer keep half a step of their excess"
            );
        }
        m
    }
}
