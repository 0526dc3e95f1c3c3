//! Reading a checkpoint back, checked against the network: names, shapes, dtypes, metadata.

use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors};

use super::{
    Checkpoint, CheckpointError, Progress, KEY_ADAM_STEP, KEY_EPOCHS_DONE, KEY_OPTIMIZER, KEY_SEED,
    KEY_STEP, NUM_BATCHES_TRACKED, OPTIMIZER_PREFIX,
};
use crate::diag::did_you_mean;
use crate::ir::Graph;
use crate::runtime::optim::OptimizerState;

/// Loads a checkpoint and checks it against `graph.params`: every parameter present with its
/// shape and dtype F32, nothing else (apart from cnnc's optimiser state and PyTorch's
/// `num_batches_tracked`).
pub fn load(path: &Path, graph: &Graph) -> Result<Checkpoint, CheckpointError> {
    let bytes = std::fs::read(path).map_err(|source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let corrupt = |e: safetensors::SafeTensorError| CheckpointError::Corrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let file = SafeTensors::deserialize(&bytes).map_err(corrupt)?;
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(corrupt)?;
    let metadata = header.metadata().clone().unwrap_or_default();
    let path_buf = || path.to_path_buf();

    let read = |name: &str, shape: &[usize]| -> Result<Vec<f32>, CheckpointError> {
        let view = file.tensor(name).map_err(|_| CheckpointError::Missing {
            path: path_buf(),
            tensor: name.to_string(),
        })?;
        if view.dtype() != Dtype::F32 {
            return Err(CheckpointError::WrongDtype {
                path: path_buf(),
                tensor: name.to_string(),
                found: format!("{:?}", view.dtype()),
            });
        }
        if view.shape() != shape {
            return Err(CheckpointError::WrongShape {
                path: path_buf(),
                tensor: name.to_string(),
                expected: shape.to_vec(),
                found: view.shape().to_vec(),
            });
        }
        Ok(view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    };

    // Anything that is neither a parameter nor reserved is an error, named, with a suggestion.
    let is_param = |name: &str| graph.params.iter().any(|p| p.name == name);
    let mut names = file.names();
    names.sort_unstable();
    for name in names {
        let tracked_of_a_batchnorm = name
            .strip_suffix(NUM_BATCHES_TRACKED)
            .is_some_and(|layer| is_param(&format!("{layer}running_mean")));
        if is_param(name) || name.starts_with(OPTIMIZER_PREFIX) || tracked_of_a_batchnorm {
            continue;
        }
        return Err(CheckpointError::Unexpected {
            path: path_buf(),
            tensor: name.to_string(),
            suggestion: did_you_mean(name, graph.params.iter().map(|p| p.name.as_str())),
        });
    }

    let params = graph
        .params
        .iter()
        .map(|p| read(&p.name, &p.shape))
        .collect::<Result<Vec<_>, _>>()?;

    let number = |key: &str| -> Result<Option<u64>, CheckpointError> {
        metadata
            .get(key)
            .map(|v| {
                v.parse::<u64>().map_err(|_| CheckpointError::Inconsistent {
                    path: path_buf(),
                    reason: format!("metadata `{key}` = {v:?} is not a whole number"),
                })
            })
            .transpose()
    };
    let state_name =
        |kind: &str, i: usize| format!("{OPTIMIZER_PREFIX}{kind}:{}", graph.params[i].name);
    let optimizer = match metadata.get(KEY_OPTIMIZER).map(String::as_str) {
        None if file.names().iter().any(|n| n.starts_with(OPTIMIZER_PREFIX)) => {
            return Err(CheckpointError::Inconsistent {
                path: path_buf(),
                reason: format!("optimiser tensors without the `{KEY_OPTIMIZER}` metadata"),
            })
        }
        None => None,
        Some("sgd") => {
            let buffers = graph
                .params
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let name = state_name("momentum_buffer", i);
                    file.names()
                        .contains(&name.as_str())
                        .then(|| read(&name, &p.shape))
                        .transpose()
                })
                .collect::<Result<Vec<_>, _>>()?;
            Some(OptimizerState::Sgd {
                momentum_buffers: buffers,
            })
        }
        Some("adam") => {
            let mut exp_avg = Vec::with_capacity(graph.params.len());
            let mut exp_avg_sq = Vec::with_capacity(graph.params.len());
            for (i, p) in graph.params.iter().enumerate() {
                let trainable = p.kind.trainable();
                exp_avg.push(if trainable {
                    read(&state_name("exp_avg", i), &p.shape)?
                } else {
                    Vec::new()
                });
                exp_avg_sq.push(if trainable {
                    read(&state_name("exp_avg_sq", i), &p.shape)?
                } else {
                    Vec::new()
                });
            }
            Some(OptimizerState::Adam {
                step: number(KEY_ADAM_STEP)?.ok_or_else(|| CheckpointError::Inconsistent {
                    path: path_buf(),
                    reason: format!("Adam state without `{KEY_ADAM_STEP}`"),
                })?,
                exp_avg,
                exp_avg_sq,
            })
        }
        Some(other) => {
            return Err(CheckpointError::Inconsistent {
                path: path_buf(),
                reason: format!("unknown optimiser {other:?} in `{KEY_OPTIMIZER}`"),
            })
        }
    };
    let progress = match (
        number(KEY_EPOCHS_DONE)?,
        number(KEY_STEP)?,
        number(KEY_SEED)?,
    ) {
        (Some(epochs_done), Some(step), Some(seed)) => Some(Progress {
            epochs_done: epochs_done as usize,
            step,
            seed,
        }),
        _ => None,
    };
    Ok(Checkpoint {
        params,
        optimizer,
        progress,
    })
}
