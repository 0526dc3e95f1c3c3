//! The `cnnc` command line. One file per subcommand; `render` is the only place that prints
//! diagnostics. Exit codes: 0 success, 1 the program has mistakes (diagnostics printed),
//! 2 bad command-line usage (clap's own).

pub mod bench;
pub mod check;
pub mod dump;
pub mod engine_io;
pub mod eval;
pub mod forward;
pub mod grad;
pub mod init;
pub mod params;
pub mod render;
pub mod run;

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand, ValueEnum};

use crate::diag::{Code, Diagnostic};
use crate::ir::Graph;
use crate::runtime::engine::Fusion;
use crate::span::SourceMap;

#[derive(Parser)]
#[command(
    name = "cnnc",
    version,
    about = "Check, compile and train CNNs written in the .cnn language"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a file: every layer's output shape, parameters and multiply-adds, and totals.
    Check {
        file: PathBuf,
        /// Only this network (default: every network in the file).
        #[arg(long)]
        network: Option<String>,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// List every parameter and buffer with its name, shape and whether it is trainable.
    Params {
        file: PathBuf,
        #[arg(long)]
        network: Option<String>,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Print an internal stage of the compiler.
    Dump {
        #[arg(long, value_enum)]
        stage: Stage,
        file: PathBuf,
        #[arg(long)]
        network: Option<String>,
    },
    /// Run the network in inference mode on a batch of inputs (`.npy`), write the outputs.
    Forward {
        file: PathBuf,
        #[arg(long)]
        network: Option<String>,
        /// Parameters and buffers (safetensors, LANGUAGE.md names, PyTorch layouts).
        #[arg(long)]
        weights: PathBuf,
        /// float32 `.npy` of shape `[N, *input]`; the batch size is N.
        #[arg(long)]
        input: PathBuf,
        /// Where to write the float32 outputs `[N, *output]`.
        #[arg(long)]
        output: PathBuf,
        /// Threads for the kernels (default: every core).
        #[arg(long)]
        threads: Option<usize>,
    },
    /// One training-mode forward and backward pass (mean softmax cross-entropy); write the
    /// gradient of every trainable parameter under its name.
    Grad {
        file: PathBuf,
        #[arg(long)]
        network: Option<String>,
        #[arg(long)]
        weights: PathBuf,
        #[arg(long)]
        input: PathBuf,
        /// Integer class labels `[N]` (int64, int32 or uint8 `.npy`).
        #[arg(long)]
        labels: PathBuf,
        /// Where to write the gradients (safetensors).
        #[arg(long)]
        output: PathBuf,
        /// Also write the weights after the step (safetensors): the parameters unchanged (no
        /// optimiser step) and the batchnorm running statistics updated, as PyTorch's
        /// training-mode forward leaves them.
        #[arg(long)]
        save_weights: Option<PathBuf>,
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Write initial weights: the network's `train { init = ... }`, or PyTorch's default.
    Init {
        file: PathBuf,
        #[arg(long)]
        network: Option<String>,
        #[arg(long)]
        seed: u64,
        #[arg(long)]
        output: PathBuf,
    },
    /// Time inference and a training step (forward, backward, optimiser update).
    Bench {
        file: PathBuf,
        #[arg(long)]
        network: Option<String>,
        #[arg(long)]
        batch: usize,
        #[arg(long)]
        threads: Option<usize>,
        /// Also time every kernel of the plan, grouped by layer.
        #[arg(long)]
        layers: bool,
        /// The machine's peak in GFLOP/s, for the fraction reached (default: measured on the
        /// bench's threads with the widest FMA vectors the CPU has).
        #[arg(long)]
        peak: Option<f64>,
        /// Lower the graph as written, without the fusion passes (to measure what they give).
        #[arg(long)]
        no_fuse: bool,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Train a network (settings from its `train` section, overridden by the flags).
    Run(run::RunArgs),
    /// Accuracy and confusion matrix of saved weights on a dataset, in inference mode.
    Eval(eval::EvalArgs),
}

/// Why a command failed: mistakes in the program (diagnostics), or in the files, data or
/// arguments handed to it at run time (a message naming the thing at fault).
#[derive(Debug)]
pub enum Failure {
    Program(Vec<Diagnostic>),
    Runtime(String),
}

impl From<Vec<Diagnostic>> for Failure {
    fn from(diagnostics: Vec<Diagnostic>) -> Self {
        Failure::Program(diagnostics)
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Stage {
    /// The parsed file, printed back as canonical `.cnn`.
    Ast,
    /// The expanded graph with shapes and parameter names.
    Ir,
    /// The graph after the fusion passes, as the engine lowers it.
    Fused,
    /// The plan's buffers and loop nests, and its schedules (at batch 1).
    Loops,
    /// The Cranelift IR of every generated function (at batch 1, for this host).
    Clif,
}

/// Runs the command line and returns the process exit code.
pub fn run() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    let mut sources = SourceMap::default();
    let result: Result<String, Failure> = match &cli.command {
        Command::Check {
            file,
            network,
            format,
        } => load_networks(file, network.as_deref(), &mut sources)
            .map(|graphs| check::report(&graphs, *format))
            .map_err(Failure::from),
        Command::Params {
            file,
            network,
            format,
        } => load_networks(file, network.as_deref(), &mut sources)
            .map(|graphs| params::report(&graphs, *format))
            .map_err(Failure::from),
        Command::Dump {
            stage,
            file,
            network,
        } => dump::report(*stage, file, network.as_deref(), &mut sources),
        Command::Forward {
            file,
            network,
            weights,
            input,
            output,
            threads,
        } => forward::run(
            &forward::Args {
                file,
                network: network.as_deref(),
                weights,
                input,
                output,
                threads: *threads,
            },
            &mut sources,
        ),
        Command::Grad {
            file,
            network,
            weights,
            input,
            labels,
            output,
            save_weights,
            threads,
        } => grad::run(
            &grad::Args {
                file,
                network: network.as_deref(),
                weights,
                input,
                labels,
                output,
                save_weights: save_weights.as_deref(),
                threads: *threads,
            },
            &mut sources,
        ),
        Command::Init {
            file,
            network,
            seed,
            output,
        } => init::run(file, network.as_deref(), *seed, output, &mut sources),
        Command::Bench {
            file,
            network,
            batch,
            threads,
            layers,
            peak,
            no_fuse,
            format,
        } => bench::run(
            &bench::Args {
                file,
                network: network.as_deref(),
                batch: *batch,
                threads: *threads,
                layers: *layers,
                peak_gflops: *peak,
                fusion: if *no_fuse { Fusion::Off } else { Fusion::On },
                format: *format,
            },
            &mut sources,
        ),
        // These print as they go (progress, one line per epoch) and choose their exit code.
        Command::Run(args) => return run::main(args, &mut sources),
        Command::Eval(args) => return eval::main(args, &mut sources),
    };
    match result {
        Ok(text) => {
            print!("{text}");
            0
        }
        Err(Failure::Program(diagnostics)) => {
            eprint!("{}", render::diagnostics(&sources, &diagnostics));
            1
        }
        Err(Failure::Runtime(message)) => {
            eprintln!("error: {message}");
            1
        }
    }
}

/// Loads `file` and keeps the network named `network` (or all of them).
pub fn load_networks(
    file: &Path,
    network: Option<&str>,
    sources: &mut SourceMap,
) -> crate::diag::Result<Vec<Graph>> {
    let graphs = crate::load_file(file, sources)?;
    select(graphs, network, file)
}

fn select(
    graphs: Vec<Graph>,
    network: Option<&str>,
    file: &Path,
) -> crate::diag::Result<Vec<Graph>> {
    if graphs.is_empty() {
        return Err(vec![Diagnostic::error(
            Code::NoSuchNetwork,
            format!("`{}` defines no network", file.display()),
        )
        .help("add `network name { input [..] ... }`")]);
    }
    let Some(wanted) = network else {
        return Ok(graphs);
    };
    let names: Vec<String> = graphs.iter().map(|g| g.name.clone()).collect();
    match graphs.into_iter().find(|g| g.name == wanted) {
        Some(g) => Ok(vec![g]),
        None => {
            let d = Diagnostic::error(
                Code::NoSuchNetwork,
                format!("`{}` has no network named `{wanted}`", file.display()),
            )
            .note(format!("its networks are {}", names.join(", ")));
            Err(vec![
                match crate::diag::did_you_mean(wanted, names.iter().map(String::as_str)) {
                    Some(help) => d.help(help),
                    None => d,
                },
            ])
        }
    }
}
