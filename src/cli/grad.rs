//! `cnnc grad FILE --weights W --input X.npy --labels L.npy --output G.safetensors`: one
//! training-mode forward pass (batch statistics, dropout on), the mean softmax cross-entropy
//! against integer labels, and the backward pass; the gradients are written under the
//! parameters' names. Like PyTorch's training-mode forward, the step updates the batchnorm
//! running statistics; `--save-weights W2.safetensors` writes them with the (unchanged)
//! parameters, so both halves of what PyTorch's `loss.backward()` leaves can be compared.

use std::path::Path;

use rand::rngs::ChaCha8Rng;
use rand::SeedableRng;

use super::engine_io::{engine_failure, engine_with_weights, load_one, read_labels};
use super::Failure;
use crate::ir::Loss;
use crate::runtime::checkpoint;
use crate::runtime::engine::Truth;
use crate::span::SourceMap;

pub struct Args<'a> {
    pub file: &'a Path,
    pub network: Option<&'a str>,
    pub weights: &'a Path,
    pub input: &'a Path,
    pub labels: &'a Path,
    pub output: &'a Path,
    /// Where to write the weights after the step (running statistics updated), if anywhere.
    pub save_weights: Option<&'a Path>,
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
    let (mut engine, input, batch) = engine_with_weights(
        &graph,
        args.weights,
        args.input,
        Loss::CrossEntropy,
        args.threads,
    )?;
    let labels = read_labels(args.labels, batch, graph.output_shape().numel())?;
    // Dropout masks come from the network's training seed, so a run is reproducible.
    let seed = graph.train.as_ref().map_or(0, |t| t.seed);
    let loss = engine
        .train_step(
            &input,
            Truth::Classes(&labels),
            &mut ChaCha8Rng::seed_from_u64(seed),
        )
        .map_err(engine_failure)?;

    // A trainable parameter no loss reaches has a zero gradient, as in PyTorch with
    // `zero_grad(set_to_none=False)`.
    let zeros: Vec<Vec<f32>> = graph.params.iter().map(|p| vec![0.0; p.numel()]).collect();
    let grads: Vec<&[f32]> = engine
        .grads()
        .into_iter()
        .zip(&zeros)
        .map(|(g, zero)| g.unwrap_or(zero))
        .collect();
    let checkpoint_error = |e: checkpoint::CheckpointError| Failure::Runtime(e.to_string());
    checkpoint::save_gradients(args.output, &graph, &grads).map_err(checkpoint_error)?;
    let mut summary = format!(
        "loss {loss}\nwrote the gradients of {} parameters to {}\n",
        graph.params.iter().filter(|p| p.kind.trainable()).count(),
        args.output.display()
    );
    if let Some(path) = args.save_weights {
        checkpoint::save(path, &graph, &engine.params(), None, None).map_err(checkpoint_error)?;
        summary += &format!(
            "wrote the weights after the step (running statistics updated) to {}\n",
            path.display()
        );
    }
    Ok(summary)
}
