//! `cnnc init FILE --seed S --output W.safetensors`: initial weights by the network's
//! `train { init = ... }` (PyTorch's default without one), batchnorm buffers included.

use std::path::Path;

use super::engine_io::load_one;
use super::Failure;
use crate::ir::Init;
use crate::runtime::{checkpoint, init::initialize};
use crate::span::SourceMap;

pub fn run(
    file: &Path,
    network: Option<&str>,
    seed: u64,
    output: &Path,
    sources: &mut SourceMap,
) -> Result<String, Failure> {
    let graph = load_one(file, network, sources)?;
    let init = graph.train.as_ref().map_or(Init::PyTorch, |t| t.init);
    let values = initialize(&graph, init, seed);
    let slices: Vec<&[f32]> = values.iter().map(Vec::as_slice).collect();
    checkpoint::save(output, &graph, &slices, None, None)
        .map_err(|e| Failure::Runtime(e.to_string()))?;
    let rule = match init {
        Init::PyTorch => "PyTorch's default",
        Init::Xavier => "Xavier",
    };
    Ok(format!(
        "wrote {} tensors of `{}` ({rule} initialisation, seed {seed}) to {}\n",
        graph.params.len(),
        graph.name,
        output.display()
    ))
}
