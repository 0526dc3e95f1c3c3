//! `cnnc forward FILE --weights W --input X.npy --output Y.npy`: inference (dropout off,
//! batchnorm with running statistics) on a batch whose size is the input's first axis.

use std::path::Path;

use ndarray::{ArrayViewD, IxDyn};

use super::engine_io::{engine_failure, engine_with_weights, load_one, loss_of};
use super::Failure;
use crate::runtime::tensors;
use crate::span::SourceMap;

pub struct Args<'a> {
    pub file: &'a Path,
    pub network: Option<&'a str>,
    pub weights: &'a Path,
    pub input: &'a Path,
    pub output: &'a Path,
    pub threads: Option<usize>,
}

/// Runs the command; the text is a one-line summary for stdout.
pub fn run(args: &Args, sources: &mut SourceMap) -> Result<String, Failure> {
    let graph = load_one(args.file, args.network, sources)?;
    let (mut engine, input, batch) = engine_with_weights(
        &graph,
        args.weights,
        args.input,
        loss_of(&graph),
        args.threads,
    )?;
    let output = engine.infer(&input).map_err(engine_failure)?;
    let mut shape = vec![batch];
    shape.extend(&graph.output_shape().0);
    let view = ArrayViewD::from_shape(IxDyn(&shape), output)
        .map_err(|e| Failure::Runtime(format!("the output does not have shape {shape:?}: {e}")))?;
    tensors::write_f32(args.output, view).map_err(|e| Failure::Runtime(e.to_string()))?;
    Ok(format!(
        "wrote {} {shape:?} ({batch} samples of `{}` in inference mode)\n",
        args.output.display(),
        graph.name
    ))
}
