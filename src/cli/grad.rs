//! `cnnc grad FILE --weights W --input X.npy --labels L.npy --output G.safetensors`: one
//! training-mode forward pass (batch statistics, dropout on), the mean softmax cross-entropy
//! against integer labels, and the backward pass; the gradients are written under the
//! parameters' names. Batchnorm running statistics are updated in the engine but not written:
//! the command's product is the gradients.

use std::path::Path;

use rand::rngs::ChaCha8Rng;
use rand::SeedableRng;

use super::engine_io::{load_one, read_input, read_labels, read_weights, set_threads};
use super::Failure;
use crate::ir::Loss;
use crate::runtime::checkpoint;
use crate::runtime::engine::{Engine, EngineError, Truth};
use crate::span::SourceMap;

pub struct Args<'a> {
    pub file: &'a Path,
    pub network: Option<&'a str>,
    pub weights: &'a Path,
    pub input: &'a Path,
    pub labels: &'a Path,
    pub output: &'a Path,
    pub threads: Option<usize>,
}

/// Runs the command; the text (the mean loss) is for stdout.
pub fn run(args: &Args, sources: &mut SourceMap) -> Result<String, Failure> {
    let graph = load_one(args.file, args.network, sources)?;
    if graph.output_shape().rank() != 1 {
        return Err(Failure::Runtime(format!(
            "network `{}` outputs {}, but `cnnc grad` uses softmax cross-entropy, which needs a vector of class scores",
            graph.name,
            graph.output_shape()
        )));
    }
    let threads = set_threads(args.threads)?;
    let params = read_weights(args.weights, &graph)?;
    let (input, batch) = read_input(args.input, &graph)?;
    let labels = read_labels(args.labels, batch, graph.output_shape().numel())?;

    let runtime = |e: EngineError| Failure::Runtime(e.to_string());
    let mut engine = Engine::new(&graph, batch, Loss::CrossEntropy, threads).map_err(runtime)?;
    engine.set_params(&params).map_err(runtime)?;
    // Dropout masks come from the network's training seed, so a run is reproducible.
    let seed = graph.train.as_ref().map_or(0, |t| t.seed);
    let loss = engine
        .train_step(
            &input,
            Truth::Classes(&labels),
            &mut ChaCha8Rng::seed_from_u64(seed),
        )
        .map_err(runtime)?;

    // A trainable parameter no loss reaches has a zero gradient, as in PyTorch with
    // `zero_grad(set_to_none=False)`.
    let zeros: Vec<Vec<f32>> = graph.params.iter().map(|p| vec![0.0; p.numel()]).collect();
    let grads: Vec<&[f32]> = engine
        .grads()
        .into_iter()
        .zip(&zeros)
        .map(|(g, zero)| g.unwrap_or(zero))
        .collect();
    checkpoint::save_gradients(args.output, &graph, &grads)
        .map_err(|e| Failure::Runtime(e.to_string()))?;
    Ok(format!(
        "loss {loss}\nwrote the gradients of {} parameters to {}\n",
        graph.params.iter().filter(|p| p.kind.trainable()).count(),
        args.output.display()
    ))
}
