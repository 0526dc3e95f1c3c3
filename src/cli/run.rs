//! `cnnc run FILE`: trains a network. The network's `train` section gives the settings and
//! the flags override them; the loop itself is [`crate::runtime::train`], and this file shows
//! it: a progress bar per epoch on a terminal, one line per epoch on stdout, the `--log` JSON
//! lines and the `--plot` SVG, rewritten after every epoch.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::{Args, ValueEnum};
use indicatif::ProgressBar;

use super::engine_io::thread_count;
use crate::ir::{DataSource, Graph, Schedule};
use crate::runtime::checkpoint;
use crate::runtime::data;
use crate::runtime::report::{self, EpochRecord};
use crate::runtime::train::{self, Ending, Event, OptimizerKind, Overrides, Run, Start};
use crate::span::SourceMap;

#[derive(Args)]
pub struct RunArgs {
    file: PathBuf,
    /// The network to train (needed when the file defines several).
    #[arg(long)]
    network: Option<String>,
    /// mnist, fashion-mnist, synthetic, or a folder of IDX files or an .npz file.
    #[arg(long)]
    data: Option<String>,
    /// Total epochs (a resumed run continues up to this number).
    #[arg(long)]
    epochs: Option<usize>,
    #[arg(long)]
    batch: Option<usize>,
    /// Learning rate.
    #[arg(long)]
    lr: Option<f32>,
    #[arg(long, value_enum)]
    optimizer: Option<OptimizerArg>,
    /// SGD's momentum.
    #[arg(long)]
    momentum: Option<f32>,
    /// L2 weight decay (SGD and Adam).
    #[arg(long)]
    weight_decay: Option<f32>,
    /// Learning-rate schedule, as the `schedule` key: constant, "step(every=N, gamma=G)",
    /// cosine or "cosine(min_lr=X)".
    #[arg(long, value_name = "SCHEDULE")]
    schedule: Option<String>,
    #[arg(long)]
    seed: Option<u64>,
    /// Threads for the kernels (default: every core).
    #[arg(long)]
    threads: Option<usize>,
    /// Checkpoint (safetensors) written at the start, after every epoch and kept on Ctrl-C.
    #[arg(long, value_name = "W.safetensors")]
    save: Option<PathBuf>,
    /// Continue from a checkpoint of `--save` (or start from converted PyTorch weights).
    #[arg(long, value_name = "W.safetensors")]
    resume: Option<PathBuf>,
    /// One JSON object per epoch.
    #[arg(long, value_name = "LOG.jsonl")]
    log: Option<PathBuf>,
    /// The training curves as an SVG.
    #[arg(long, value_name = "CURVES.svg")]
    plot: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum OptimizerArg {
    Sgd,
    Adam,
}

/// `--data` as a source; a path is made absolute here because paths in a `train` section are
/// relative to the `.cnn` file, while a path on the command line is relative to the shell.
pub fn data_source(text: &str) -> DataSource {
    match text {
        "mnist" => DataSource::Mnist,
        "fashion-mnist" => DataSource::FashionMnist,
        "synthetic" => DataSource::Synthetic,
        path => DataSource::Path(
            std::path::absolute(path)
                .unwrap_or_else(|_| PathBuf::from(path))
                .to_string_lossy()
                .into_owned(),
        ),
    }
}

/// Loads the one network of `file` that the user means.
pub fn load_network(
    file: &Path,
    network: Option<&str>,
    sources: &mut SourceMap,
) -> Result<Graph, String> {
    let graphs = super::load_networks(file, network, sources)
        .map_err(|d| super::render::diagnostics(sources, &d))?;
    match <[Graph; 1]>::try_from(graphs) {
        Ok([graph]) => Ok(graph),
        Err(graphs) => {
            let names: Vec<&str> = graphs.iter().map(|g| g.name.as_str()).collect();
            Err(format!(
                "error: `{}` defines several networks ({}); choose one with --network\n",
                file.display(),
                names.join(", ")
            ))
        }
    }
}

/// Runs `cnnc run` and returns the exit code: 0 done, 1 an error, 130 interrupted (Ctrl-C).
pub fn main(args: &RunArgs, sources: &mut SourceMap) -> i32 {
    match run(args, sources) {
        Ok(code) => code,
        Err(message) => {
            eprint!("{message}");
            1
        }
    }
}

/// `--schedule TEXT`, read as the value of the `schedule` key (same parser, same checks, same
/// diagnostics, shown against the flag's text).
pub fn schedule_flag(text: &str, sources: &mut SourceMap) -> Result<Schedule, String> {
    let file = sources.add("--schedule", None, text.to_string());
    crate::syntax::parser::parse_setting_value(file, text)
        .and_then(|expr| crate::ir::train::schedule_value(&expr))
        .map_err(|d| super::render::diagnostics(sources, &d))
}

fn run(args: &RunArgs, sources: &mut SourceMap) -> Result<i32, String> {
    let graph = load_network(&args.file, args.network.as_deref(), sources)?;
    let schedule = match &args.schedule {
        Some(text) => Some(schedule_flag(text, sources)?),
        None => None,
    };
    let overrides = Overrides {
        data: args.data.as_deref().map(data_source),
        epochs: args.epochs,
        batch: args.batch,
        lr: args.lr,
        optimizer: args.optimizer.map(|o| match o {
            OptimizerArg::Sgd => OptimizerKind::Sgd,
            OptimizerArg::Adam => OptimizerKind::Adam,
        }),
        momentum: args.momentum,
        weight_decay: args.weight_decay,
        schedule,
        seed: args.seed,
    };
    let config =
        train::settings(graph.train.as_ref(), &overrides).map_err(|e| format!("error: {e}\n"))?;
    let threads = thread_count(args.threads).map_err(|e| format!("error: {e}\n"))?;
    let base_dir = args.file.parent().unwrap_or(Path::new("."));
    let splits = data::load(&config.data, base_dir, &graph, config.loss, config.seed)
        .map_err(|e| format!("error: {e}\n"))?;
    for note in &splits.notes {
        eprintln!("note: {note}");
    }
    let start = match &args.resume {
        Some(path) => {
            let checkpoint = checkpoint::load(path, &graph).map_err(|e| format!("error: {e}\n"))?;
            if let Some(progress) = &checkpoint.progress {
                eprintln!(
                    "resuming `{}` after epoch {} (seed {})",
                    path.display(),
                    progress.epochs_done,
                    progress.seed
                );
            }
            Start::Resume(checkpoint)
        }
        None => Start::Fresh,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    // Without a handler Ctrl-C still ends the process, only without the clean message.
    let _ = ctrlc::set_handler(move || flag.store(true, Ordering::Relaxed));

    let mut log = match &args.log {
        Some(path) => Some(File::create(path).map_err(|e| cannot_write(path, &e))?),
        None => None,
    };
    // The plot's empty axes, so that a path it cannot be written to is an error now rather
    // than after the first epoch.
    if let Some(path) = &args.plot {
        std::fs::write(path, report::plot_svg(&[], &graph.name))
            .map_err(|e| cannot_write(path, &e))?;
    }
    println!(
        "training {} on {} samples ({} test), {} epochs, batch {}, {} threads",
        graph.name,
        splits.train.len(),
        splits.test.as_ref().map_or(0, |t| t.len()),
        config.epochs,
        config.batch,
        threads
    );
    if config.schedule != Schedule::Constant {
        println!("learning rate schedule: {}", config.schedule);
    }
    let epochs = config.epochs;
    let run = Run {
        graph: &graph,
        config,
        threads,
        save: args.save.clone(),
    };
    let mut bar: Option<ProgressBar> = None;
    let mut seen: Vec<EpochRecord> = Vec::new();
    let mut write_error: Option<String> = None;
    let mut observe = |event: Event| match event {
        Event::EpochStart { epoch, batches } => {
            bar = Some(report::progress_bar(epoch, epochs, batches as u64));
        }
        Event::Batch {
            running_loss,
            images_per_second,
        } => {
            if let Some(bar) = &bar {
                bar.inc(1);
                bar.set_message(report::progress_message(running_loss, images_per_second));
            }
        }
        Event::EpochEnd(record) => {
            if let Some(bar) = bar.take() {
                bar.finish_and_clear();
            }
            println!("{}", report::epoch_line(record, epochs));
            seen.push(record.clone());
            let written = write_outputs(&mut log, args.plot.as_deref(), record, &seen, &graph);
            if let Err(e) = written {
                write_error.get_or_insert(e);
            }
        }
    };
    let outcome = train::train(&run, &splits, start, &stop, &mut observe);
    if let Some(bar) = bar.take() {
        bar.abandon();
    }
    if let Some(e) = write_error {
        eprint!("{e}");
    }
    let outcome = outcome.map_err(|e| format!("error: {e}\n"))?;
    match outcome.ending {
        Ending::Finished => {
            if let Some(path) = &args.save {
                println!(
                    "saved `{}` (after epoch {})",
                    path.display(),
                    outcome.epochs_done
                );
            }
            Ok(0)
        }
        Ending::Interrupted { epoch, batch } => {
            let kept = match &args.save {
                Some(path) => format!(
                    "`{}` holds the state after epoch {}; continue with --resume {}",
                    path.display(),
                    outcome.epochs_done,
                    path.display()
                ),
                None => "nothing was saved (use --save to keep checkpoints)".to_string(),
            };
            eprintln!("interrupted in epoch {epoch} before batch {batch}: {kept}");
            Ok(130)
        }
    }
}

fn cannot_write(path: &Path, e: &std::io::Error) -> String {
    format!("error: cannot write `{}`: {e}\n", path.display())
}

/// Appends `record` to the log and redraws the plot from every record so far.
fn write_outputs(
    log: &mut Option<File>,
    plot: Option<&Path>,
    record: &EpochRecord,
    records: &[EpochRecord],
    graph: &Graph,
) -> Result<(), String> {
    if let Some(file) = log {
        writeln!(file, "{}", report::log_line(record))
            .and_then(|()| file.flush())
            .map_err(|e| format!("error: cannot write the log: {e}\n"))?;
    }
    if let Some(path) = plot {
        std::fs::write(path, report::plot_svg(records, &graph.name))
            .map_err(|e| cannot_write(path, &e))?;
    }
    Ok(())
}
