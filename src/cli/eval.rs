//! `cnnc eval FILE --weights W --data D`: the network with saved weights on the test split
//! (the training split when the data has none), in inference mode: accuracy and the confusion
//! matrix, or the mean squared error for target data.

use std::fmt::Write;
use std::path::PathBuf;

use clap::Args;

use crate::runtime::checkpoint;
use crate::runtime::data;
use crate::runtime::engines::Engines;
use crate::runtime::eval::{evaluate, Confusion, Evaluation};
use crate::runtime::train::{self, Overrides};
use crate::span::SourceMap;

use super::engine_io::thread_count;
use super::run::{data_source, load_network};

#[derive(Args)]
pub struct EvalArgs {
    file: PathBuf,
    #[arg(long)]
    network: Option<String>,
    /// Weights to evaluate (a checkpoint of `cnnc run --save`, or converted PyTorch weights).
    #[arg(long, value_name = "W.safetensors")]
    weights: PathBuf,
    /// mnist, fashion-mnist, synthetic, or a folder of IDX files or an .npz file (default: the
    /// network's `train` section).
    #[arg(long)]
    data: Option<String>,
    /// Samples per inference batch (default: the `train` section's batch).
    #[arg(long)]
    batch: Option<usize>,
    #[arg(long)]
    threads: Option<usize>,
}

/// Runs `cnnc eval` and returns the exit code.
pub fn main(args: &EvalArgs, sources: &mut SourceMap) -> i32 {
    match eval(args, sources) {
        Ok(text) => {
            print!("{text}");
            0
        }
        Err(message) => {
            eprint!("{message}");
            1
        }
    }
}

fn eval(args: &EvalArgs, sources: &mut SourceMap) -> Result<String, String> {
    let graph = load_network(&args.file, args.network.as_deref(), sources)?;
    let overrides = Overrides {
        data: args.data.as_deref().map(data_source),
        batch: args.batch,
        ..Overrides::default()
    };
    let config =
        train::settings(graph.train.as_ref(), &overrides).map_err(|e| format!("error: {e}\n"))?;
    let threads = thread_count(args.threads).map_err(|e| format!("error: {e}\n"))?;
    let error = |e: &dyn std::fmt::Display| format!("error: {e}\n");
    let base_dir = args.file.parent().unwrap_or(std::path::Path::new("."));
    let splits = data::load(&config.data, base_dir, &graph, config.loss, config.seed)
        .map_err(|e| error(&e))?;
    let weights = checkpoint::load(&args.weights, &graph).map_err(|e| error(&e))?;
    let (split, dataset) = match &splits.test {
        Some(test) => ("test", test),
        None => ("training", &splits.train),
    };
    if dataset.is_empty() {
        return Err(format!("error: the {split} data has no samples\n"));
    }
    let batch = config.batch.clamp(1, dataset.len());
    let mut engines = Engines::new(&graph, config.loss, threads, batch, &weights.params)
        .map_err(|e| error(&e))?;
    let evaluation = evaluate(&mut engines, dataset, batch).map_err(|e| error(&e))?;
    let mut text = String::new();
    for note in &splits.notes {
        let _ = writeln!(text, "note: {note}");
    }
    let _ = writeln!(
        text,
        "{} on the {split} data ({} samples):",
        graph.name,
        dataset.len()
    );
    match evaluation {
        Evaluation::Classes(confusion) => {
            let _ = writeln!(
                text,
                "accuracy {:.4} ({} of {})\n",
                confusion.accuracy(),
                confusion.correct(),
                confusion.total()
            );
            text.push_str(&confusion_table(&confusion));
        }
        Evaluation::Targets {
            mean_squared_error, ..
        } => {
            let _ = writeln!(text, "mean squared error {mean_squared_error:.6}");
        }
    }
    Ok(text)
}

/// The confusion matrix as text: a row per true class, a column per predicted class.
pub fn confusion_table(confusion: &Confusion) -> String {
    let width = confusion
        .counts
        .iter()
        .map(|c| c.to_string().len())
        .max()
        .unwrap_or(1)
        .max(confusion.classes.saturating_sub(1).to_string().len());
    let mut text = format!("{:>10}  predicted\n{:>10}", "", "true");
    for predicted in 0..confusion.classes {
        let _ = write!(text, " {predicted:>width$}");
    }
    text.push('\n');
    for truth in 0..confusion.classes {
        let _ = write!(text, "{truth:>10}");
        for predicted in 0..confusion.classes {
            let _ = write!(text, " {:>width$}", confusion.count(truth, predicted));
        }
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confusion_table_puts_truth_in_rows() {
        let mut confusion = Confusion::new(3);
        confusion.add(0, 0);
        confusion.add(2, 1);
        confusion.add(2, 1);
        let table = confusion_table(&confusion);
        let rows: Vec<&str> = table.lines().collect();
        assert_eq!(
            rows[1].split_whitespace().collect::<Vec<_>>(),
            ["true", "0", "1", "2"]
        );
        assert_eq!(
            rows[2].split_whitespace().collect::<Vec<_>>(),
            ["0", "1", "0", "0"]
        );
        assert_eq!(
            rows[4].split_whitespace().collect::<Vec<_>>(),
            ["2", "0", "2", "0"]
        );
    }
}
