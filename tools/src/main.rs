//! The `qmul` command.

use clap::{Parser, Subcommand};
use qmul_tools::cli;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "qmul",
    version,
    about = "Train, evaluate and inspect 4-bit models; make them forget"
)]
struct Cli {
    /// Precision of the backward's gradient GEMMs: f32, or bf16 (dY rounded to
    /// bf16, f32 sums; used where the CPU has bf16 dot products, f32 elsewhere).
    /// Default: QMUL_BACKWARD, else bf16.
    #[arg(long, global = true, value_parser = ["f32", "bf16"])]
    backward: Option<String>,
    /// Where the work runs: cpu, or a GPU through wgpu (Vulkan, Metal, DX12)
    /// or CUDA (builds with the `gpu` / `cuda` feature): `train`, `eval`,
    /// `bench`, and the training of `unlearn`, `demo` and `experiment`.
    #[arg(long, global = true, value_parser = qmul_tools::device::NAMES, default_value = "cpu")]
    device: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Train a model from scratch and save it as a .qmul file.
    Train(cli::TrainArgs),
    /// Evaluate a model's test accuracy.
    Eval(cli::EvalArgs),
    /// Print a model file's architecture, quantization and size.
    Inspect(cli::InspectArgs),
    /// Make a model forget a set of training samples.
    Unlearn(cli::UnlearnArgs),
    /// The main job: the shipped 4-bit model forgets 10% of its data, then one class.
    Demo(cli::DemoArgs),
    /// The full method table for one setting (cached models, resumable).
    Experiment(cli::ExperimentArgs),
    /// Rewrite an experiment's table.md and avg_gap.svg from its results.json.
    Report(cli::ReportArgs),
    /// List a deletion-receipt log and verify its checksums and chain.
    Receipts(cli::ReceiptsArgs),
    /// Rewrite model files in the current format (adds the data checksum).
    Upgrade(cli::UpgradeArgs),
    /// Post-training quantization: a full-precision model into the 4-bit PACT model.
    Quantize(cli::QuantizeArgs),
    /// PyTorch checkpoints (safetensors) to .qmul models and back.
    Convert(cli::ConvertArgs),
    /// Ceilings, kernels, training and inference speed and memory (against PyTorch with --torch).
    Bench(cli::BenchArgs),
}

fn main() -> ExitCode {
    // The runtime's allocator setting (sessions apply it too): training
    // commands reuse a step's buffers instead of faulting them in again.
    qmul_runtime::session::alloc::keep_freed_memory();
    let args = Cli::parse();
    if let Some(p) = args
        .backward
        .as_deref()
        .and_then(qmul_kernels::GradPrecision::parse)
    {
        qmul_kernels::set_grad_precision(p);
    }
    if let Some(e) = qmul_kernels::override_error() {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    qmul_tools::device::select(&args.device);
    let r = match args.cmd {
        Cmd::Train(a) => cli::train(a),
        Cmd::Eval(a) => cli::eval(a),
        Cmd::Inspect(a) => cli::inspect(a),
        Cmd::Unlearn(a) => cli::unlearn_cmd(a),
        Cmd::Demo(a) => cli::demo(a),
        Cmd::Experiment(a) => cli::experiment(a),
        Cmd::Report(a) => cli::render(a),
        Cmd::Receipts(a) => cli::receipts(a),
        Cmd::Upgrade(a) => cli::upgrade(a),
        Cmd::Quantize(a) => cli::quantize(a),
        Cmd::Convert(a) => cli::convert(a),
        Cmd::Bench(a) => cli::bench(a),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
