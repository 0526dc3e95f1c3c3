//! Writing checkpoints (parameters, optimiser state, progress) and gradients.

use std::collections::HashMap;
use std::path::Path;

use super::file::{save_tensors, F32};
use super::{
    CheckpointError, Progress, KEY_ADAM_STEP, KEY_EPOCHS_DONE, KEY_OPTIMIZER, KEY_SEED, KEY_STEP,
    OPTIMIZER_PREFIX,
};
use crate::ir::{Graph, Param};
use crate::runtime::optim::OptimizerState;

/// Pairs `values` (one slice per entry of `Graph::params`) with the parameters' names, keeping
/// those `keep` accepts; a slice of the wrong length is refused rather than written.
fn named<'a>(
    path: &Path,
    graph: &Graph,
    values: &[&'a [f32]],
    keep: impl Fn(&Param) -> bool,
) -> Result<Vec<(String, F32<'a>)>, CheckpointError> {
    if values.len() != graph.params.len() {
        return Err(CheckpointError::Inconsistent {
            path: path.to_path_buf(),
            reason: format!(
                "{} tensors given for the network's {} parameters",
                values.len(),
                graph.params.len()
            ),
        });
    }
    graph
        .params
        .iter()
        .zip(values)
        .filter(|(p, _)| keep(p))
        .map(|(p, &values)| {
            if values.len() != p.numel() {
                return Err(CheckpointError::WrongShape {
                    path: path.to_path_buf(),
                    tensor: p.name.clone(),
                    expected: p.shape.clone(),
                    found: vec![values.len()],
                });
            }
            let shape = p.shape.clone();
            Ok((p.name.clone(), F32 { shape, values }))
        })
        .collect()
}

/// Saves the parameters (`Graph::params` order) and, for training, the optimiser state and
/// progress. Each `params[i]` must hold `graph.params[i].numel()` values.
pub fn save(
    path: &Path,
    graph: &Graph,
    params: &[&[f32]],
    optimizer: Option<&OptimizerState>,
    progress: Option<&Progress>,
) -> Result<(), CheckpointError> {
    let mut tensors = named(path, graph, params, |_| true)?;
    let mut metadata = HashMap::new();
    fn add_state<'a>(graph: &Graph, kind: &str, i: usize, values: &'a [f32]) -> (String, F32<'a>) {
        let name = format!("{OPTIMIZER_PREFIX}{kind}:{}", graph.params[i].name);
        let shape = graph.params[i].shape.clone();
        (name, F32 { shape, values })
    }
    let mut state_tensors = Vec::new();
    match optimizer {
        Some(OptimizerState::Sgd { momentum_buffers }) => {
            metadata.insert(KEY_OPTIMIZER.into(), "sgd".into());
            for (i, buffer) in momentum_buffers.iter().enumerate() {
                if let Some(b) = buffer {
                    state_tensors.push(add_state(graph, "momentum_buffer", i, b));
                }
            }
        }
        Some(OptimizerState::Adam {
            step,
            exp_avg,
            exp_avg_sq,
        }) => {
            metadata.insert(KEY_OPTIMIZER.into(), "adam".into());
            metadata.insert(KEY_ADAM_STEP.into(), step.to_string());
            for (i, (m, v)) in exp_avg.iter().zip(exp_avg_sq).enumerate() {
                if graph.params[i].kind.trainable() {
                    state_tensors.push(add_state(graph, "exp_avg", i, m));
                    state_tensors.push(add_state(graph, "exp_avg_sq", i, v));
                }
            }
        }
        None => {}
    }
    tensors.extend(state_tensors);
    if let Some(progress) = progress {
        metadata.insert(KEY_EPOCHS_DONE.into(), progress.epochs_done.to_string());
        metadata.insert(KEY_STEP.into(), progress.step.to_string());
        metadata.insert(KEY_SEED.into(), progress.seed.to_string());
    }
    save_tensors(path, tensors, metadata)
}

/// Saves the gradients of the trainable parameters (`grads` in `Graph::params` order; entries
/// of buffers are ignored) under the parameters' names: the output of `cnnc grad`.
pub fn save_gradients(path: &Path, graph: &Graph, grads: &[&[f32]]) -> Result<(), CheckpointError> {
    let tensors = named(path, graph, grads, |p| p.kind.trainable())?;
    save_tensors(path, tensors, HashMap::new())
}
