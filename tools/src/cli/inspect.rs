//! `qmul inspect`: what a model file holds.

use clap::Args;
use qmul_runtime::model_file::Integrity;
use qmul_runtime::session::OpenModel;
use qmul_runtime::Op;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct InspectArgs {
    pub file: PathBuf,
}

pub fn inspect(a: InspectArgs) -> Result<(), String> {
    let open = OpenModel::open(&a.file).map_err(|e| e.to_string())?;
    let info = open.info();
    let model = open.model();
    let size = info.file_bytes;
    let g = &model.graph;
    let count = |f: fn(&Op) -> bool| g.nodes.iter().filter(|o| f(o)).count();
    let s = g.input_shape();
    println!("file          {}", a.file.display());
    println!(
        "architecture  {} (width {})",
        model.info.get("arch").map(String::as_str).unwrap_or("?"),
        model.info.get("width").map(String::as_str).unwrap_or("?")
    );
    println!(
        "input         {}x{}x{} u8, value = pixel/255",
        s.h, s.w, s.c
    );
    println!("classes       {}", g.classes);
    println!(
        "quantization  {} ({}-bit weights and activations, {}-bit stem and classifier)",
        g.scheme.name(),
        info.bits,
        info.edge_bits
    );
    let precs: Vec<String> = g
        .nodes
        .iter()
        .filter_map(|o| match o {
            Op::Conv { name, prec, .. } | Op::Linear { name, prec, .. } => {
                Some(format!("{name}:{prec:?}"))
            }
            _ => None,
        })
        .filter(|s| !s.ends_with("Int4"))
        .collect();
    println!(
        "non-4-bit     {}",
        if precs.is_empty() {
            "none".into()
        } else {
            precs.join(", ")
        }
    );
    println!(
        "layers        {} conv, {} batchnorm, {} act, {} linear",
        count(|o| matches!(o, Op::Conv { .. })),
        count(|o| matches!(o, Op::BatchNorm { .. })),
        count(|o| matches!(o, Op::Act { .. })),
        count(|o| matches!(o, Op::Linear { .. }))
    );
    println!("parameters    {}", model.param_count());
    println!(
        "size on disk  {} bytes ({:.1} KiB)",
        size,
        size as f64 / 1024.0
    );
    println!(
        "integrity     {}",
        match info.integrity {
            Integrity::Verified => format!(
                "tensor-data SHA-256 verified; file sha256 {}",
                info.file_sha256
            ),
            Integrity::Unchecked =>
                "no checksum (format version 1): run `qmul upgrade FILE` to add one".into(),
        }
    );
    println!(
        "sub-bin state {}",
        if model.scheme() == qmul_runtime::QuantScheme::None {
            "not needed (full-precision weights are stored as they are)"
        } else if model.exact_latent {
            "exact f32 latent weights kept (format version 4, e.g. `qmul convert --latent exact`): \
             unlearning continues where the last run stopped, and the weights convert back bit for bit"
        } else if open.has_sub_bin() {
            "kept (16-bit residual per quantized weight): unlearning continues where the last run stopped"
        } else {
            "none (written before format version 3): unlearning starts at the bins' centres"
        }
    );
    for (k, v) in &model.info {
        println!("info.{k:<9} {v}");
    }
    Ok(())
}
