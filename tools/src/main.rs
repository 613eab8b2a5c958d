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
}

fn main() -> ExitCode {
    let args = Cli::parse();
    let r = match args.cmd {
        Cmd::Train(a) => cli::train(a),
        Cmd::Eval(a) => cli::eval(a),
        Cmd::Inspect(a) => cli::inspect(a),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
