//! The `cnnc` command line. One file per subcommand; `render` is the only place that prints
//! diagnostics. Exit codes: 0 success, 1 the program has mistakes (diagnostics printed),
//! 2 bad command-line usage (clap's own).

pub mod check;
pub mod dump;
pub mod eval;
pub mod params;
pub mod render;
pub mod run;

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand, ValueEnum};

use crate::diag::{Code, Diagnostic};
use crate::ir::Graph;
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
    /// Train a network (settings from its `train` section, overridden by the flags).
    Run(run::RunArgs),
    /// Accuracy and confusion matrix of saved weights on a dataset, in inference mode.
    Eval(eval::EvalArgs),
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
    let result = match &cli.command {
        Command::Check {
            file,
            network,
            format,
        } => load_networks(file, network.as_deref(), &mut sources)
            .map(|graphs| check::report(&graphs, *format)),
        Command::Params {
            file,
            network,
            format,
        } => load_networks(file, network.as_deref(), &mut sources)
            .map(|graphs| params::report(&graphs, *format)),
        Command::Dump {
            stage,
            file,
            network,
        } => dump::report(*stage, file, network.as_deref(), &mut sources),
        // These print as they go (progress, one line per epoch) and choose their exit code.
        Command::Run(args) => return run::main(args, &mut sources),
        Command::Eval(args) => return eval::main(args, &mut sources),
    };
    match result {
        Ok(text) => {
            print!("{text}");
            0
        }
        Err(diagnostics) => {
            eprint!("{}", render::diagnostics(&sources, &diagnostics));
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
