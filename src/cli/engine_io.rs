//! What the engine commands (`forward`, `grad`, `init`, `bench`) share: choosing one network,
//! sizing the thread pool, and reading weights, inputs and labels with errors that name the
//! file and what is wrong with it.

use std::path::Path;

use super::Failure;
use crate::diag::{Code, Diagnostic};
use crate::ir::{Graph, Loss};
use crate::runtime::engine::{Engine, EngineError};
use crate::runtime::{checkpoint, tensors};
use crate::span::SourceMap;

/// The one network the command runs: the one named by `--network`, or the file's only one.
pub fn load_one(
    file: &Path,
    network: Option<&str>,
    sources: &mut SourceMap,
) -> Result<Graph, Failure> {
    let mut graphs = super::load_networks(file, network, sources)?;
    if graphs.len() > 1 {
        let names: Vec<&str> = graphs.iter().map(|g| g.name.as_str()).collect();
        return Err(Failure::Program(vec![Diagnostic::error(
            Code::NoSuchNetwork,
            format!(
                "`{}` defines {} networks; this command runs one",
                file.display(),
                graphs.len()
            ),
        )
        .note(format!("its networks are {}", names.join(", ")))
        .help(format!("choose one with `--network {}`", names[0]))]));
    }
    Ok(graphs.remove(0))
}

/// Builds rayon's global pool with `threads` threads (default: every core, and never more:
/// threads beyond the cores only take turns, and the step slowed down with them, 60 times over
/// with 1024 threads on 2 cores; a note says so) and returns the count to hand to the engine;
/// 0 is refused with the message. The pool can be built once per process; a second call keeps
/// the first pool, which only happens when a library user calls two commands in one process.
pub fn thread_count(threads: Option<usize>) -> Result<usize, String> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let count = match threads {
        Some(0) => return Err("--threads must be at least 1".to_string()),
        Some(n) if n > cores => {
            eprintln!("note: --threads {n} is more than the {cores} cores here: using {cores}");
            cores
        }
        Some(n) => n,
        None => cores,
    };
    // An error means the global pool already exists, which is fine (see above).
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(count)
        .build_global();
    Ok(count)
}

/// [`thread_count`] for the commands that fail with a [`Failure`].
pub fn set_threads(threads: Option<usize>) -> Result<usize, Failure> {
    thread_count(threads).map_err(Failure::Runtime)
}

/// The loss a network trains with (its `train` section, else cross-entropy).
pub fn loss_of(graph: &Graph) -> Loss {
    graph.train.as_ref().map_or(Loss::CrossEntropy, |t| t.loss)
}

/// Every parameter and buffer of `graph` from a safetensors file, `Graph::params` order.
pub fn read_weights(path: &Path, graph: &Graph) -> Result<Vec<Vec<f32>>, Failure> {
    checkpoint::load(path, graph)
        .map(|c| c.params)
        .map_err(|e| Failure::Runtime(e.to_string()))
}

/// A float32 batch `[N, *input]` for `graph`; returns it flat with N.
pub fn read_input(path: &Path, graph: &Graph) -> Result<(Vec<f32>, usize), Failure> {
    let array = tensors::read_f32(path).map_err(|e| Failure::Runtime(e.to_string()))?;
    let sample = &graph.input().shape.0;
    let shape = array.shape();
    if shape.len() != sample.len() + 1 || shape[1..] != sample[..] || shape[0] == 0 {
        let mut expected = vec!["N".to_string()];
        expected.extend(sample.iter().map(usize::to_string));
        return Err(Failure::Runtime(format!(
            "{}: the input has shape {shape:?}, but network `{}` takes [{}] (N ≥ 1 samples of its `input`)",
            path.display(),
            graph.name,
            expected.join(", ")
        )));
    }
    let batch = shape[0];
    // `read_f32` returns C order, so iteration order is the engine's layout.
    Ok((array.iter().copied().collect(), batch))
}

/// Class labels for a batch of `batch` samples of a network with `classes` outputs.
pub fn read_labels(path: &Path, batch: usize, classes: usize) -> Result<Vec<u32>, Failure> {
    let array = tensors::read_labels(path).map_err(|e| Failure::Runtime(e.to_string()))?;
    if array.ndim() != 1 || array.len() != batch {
        return Err(Failure::Runtime(format!(
            "{}: the labels have shape {:?}, expected [{batch}] (one per input sample)",
            path.display(),
            array.shape()
        )));
    }
    array
        .iter()
        .enumerate()
        .map(|(i, &label)| {
            u32::try_from(label)
                .ok()
                .filter(|&l| (l as usize) < classes)
                .ok_or_else(|| {
                    Failure::Runtime(format!(
                        "{}: label {i} is {label}, outside the classes 0..{classes} of the network's output",
                        path.display()
                    ))
                })
        })
        .collect()
}

/// An engine error as the command's failure.
pub fn engine_failure(e: EngineError) -> Failure {
    Failure::Runtime(e.to_string())
}

/// The start of `cnnc forward` and `cnnc grad`: the input batch read from `input`, and an
/// engine for `graph` at that batch size holding the weights read from `weights`. Returns the
/// engine, the input and the batch size.
pub fn engine_with_weights(
    graph: &Graph,
    weights: &Path,
    input: &Path,
    loss: Loss,
    threads: Option<usize>,
) -> Result<(Engine, Vec<f32>, usize), Failure> {
    let threads = set_threads(threads)?;
    let params = read_weights(weights, graph)?;
    let (input, batch) = read_input(input, graph)?;
    let mut engine = Engine::new(graph, batch, loss, threads).map_err(engine_failure)?;
    engine.set_params(&params).map_err(engine_failure)?;
    Ok((engine, input, batch))
}
