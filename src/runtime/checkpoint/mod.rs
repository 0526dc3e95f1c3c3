//! Checkpoints as safetensors: the network's parameters and buffers under their LANGUAGE.md
//! names in PyTorch layouts (f32), so a PyTorch `state_dict` renamed to cnnc's names loads as
//! is, and a cnnc checkpoint loads into PyTorch. A training checkpoint adds what `--resume`
//! needs to continue exactly:
//!
//! - optimiser tensors under the reserved prefix `optimizer:` (a `:` cannot appear in a layer
//!   name): `optimizer:momentum_buffer:<param>` (SGD, once it exists),
//!   `optimizer:exp_avg:<param>` and `optimizer:exp_avg_sq:<param>` (Adam);
//! - metadata (string → string): `cnnc.optimizer` (`sgd`/`adam`), `cnnc.adam_step`,
//!   `cnnc.epochs_done`, `cnnc.step`, `cnnc.seed`. Shuffling and synthetic data are functions
//!   of `(seed, epoch)` ([`crate::runtime::rng`]), so no generator state is stored.
//!
//! Writes are atomic: the file is written to `<file>.tmp` in the same folder, flushed to disk,
//! then renamed over the target, so an interruption leaves the previous checkpoint intact.

mod file;

use crate::diag::did_you_mean;
use crate::ir::{Graph, Param};
use crate::runtime::optim::OptimizerState;
use file::{save_tensors, F32};
use safetensors::tensor::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

const OPTIMIZER_PREFIX: &str = "optimizer:";
const KEY_OPTIMIZER: &str = "cnnc.optimizer";
const KEY_ADAM_STEP: &str = "cnnc.adam_step";
const KEY_EPOCHS_DONE: &str = "cnnc.epochs_done";
const KEY_STEP: &str = "cnnc.step";
const KEY_SEED: &str = "cnnc.seed";
/// PyTorch's batchnorm counter: present in its state_dicts, unused by cnnc (momentum is set).
const NUM_BATCHES_TRACKED: &str = "num_batches_tracked";

/// Where a training run stands after the last completed epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    pub epochs_done: usize,
    /// Optimiser steps taken so far.
    pub step: u64,
    pub seed: u64,
}

/// A loaded checkpoint: values in `Graph::params` order, and what training saved, if anything.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    pub params: Vec<Vec<f32>>,
    pub optimizer: Option<OptimizerState>,
    pub progress: Option<Progress>,
}

/// Why a checkpoint could not be written or read. Tensor-level variants name the tensor.
#[derive(Debug)]
pub enum CheckpointError {
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Not a safetensors file, or one cut short.
    Corrupt {
        path: PathBuf,
        reason: String,
    },
    Missing {
        path: PathBuf,
        tensor: String,
    },
    Unexpected {
        path: PathBuf,
        tensor: String,
        suggestion: Option<String>,
    },
    WrongShape {
        path: PathBuf,
        tensor: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    WrongDtype {
        path: PathBuf,
        tensor: String,
        found: String,
    },
    /// Metadata that does not parse, optimiser tensors without their metadata, or a number of
    /// tensors handed to `save` that is not the network's number of parameters.
    Inconsistent {
        path: PathBuf,
        reason: String,
    },
}

impl fmt::Display for CheckpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use CheckpointError::*;
        match self {
            Io { path, source } => write!(f, "{}: {source}", path.display()),
            Corrupt { path, reason } => write!(
                f,
                "{}: truncated or corrupt safetensors file: {reason}",
                path.display()
            ),
            Missing { path, tensor } => write!(f, "{}: missing tensor `{tensor}`", path.display()),
            Unexpected {
                path,
                tensor,
                suggestion,
            } => {
                write!(
                    f,
                    "{}: tensor `{tensor}` is not a parameter of this network",
                    path.display()
                )?;
                match suggestion {
                    Some(name) => write!(f, " (did you mean `{name}`?)"),
                    None => Ok(()),
                }
            }
            WrongShape {
                path,
                tensor,
                expected,
                found,
            } => write!(
                f,
                "{}: tensor `{tensor}` has shape {found:?}, the network expects {expected:?}",
                path.display()
            ),
            WrongDtype {
                path,
                tensor,
                found,
            } => {
                write!(
                    f,
                    "{}: tensor `{tensor}` is {found}, expected F32",
                    path.display()
                )
            }
            Inconsistent { path, reason } => write!(f, "{}: {reason}", path.display()),
        }
    }
}

impl std::error::Error for CheckpointError {}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir;
    use crate::span::SourceMap;

    /// input [3] → dense 2 → batchnorm, built by the front end.
    fn graph() -> Graph {
        let text = "network t { input [3]; dense 2; batchnorm }";
        let mut graphs =
            crate::load_str("t.cnn", text, &mut SourceMap::default()).expect("valid network");
        graphs.remove(0)
    }

    fn values() -> Vec<Vec<f32>> {
        graph()
            .params
            .iter()
            .enumerate()
            .map(|(i, p)| {
                (0..p.numel())
                    .map(|j| i as f32 + j as f32 * 0.125)
                    .collect()
            })
            .collect()
    }

    fn slices(values: &[Vec<f32>]) -> Vec<&[f32]> {
        values.iter().map(Vec::as_slice).collect()
    }

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("cnnc-ckpt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir.join(name)
    }

    /// Writes raw named f32 tensors, as PyTorch's `safetensors.torch.save_file` would.
    fn write_raw(path: &Path, tensors: &[(&str, Vec<usize>, Vec<f32>)]) {
        let views: Vec<(String, F32)> = tensors
            .iter()
            .map(|(n, s, v)| {
                (
                    n.to_string(),
                    F32 {
                        shape: s.clone(),
                        values: v,
                    },
                )
            })
            .collect();
        save_tensors(path, views, HashMap::new()).expect("write");
    }

    fn plain_tensors() -> Vec<(&'static str, Vec<usize>, Vec<f32>)> {
        let g = graph();
        let names = [
            "dense1.weight",
            "dense1.bias",
            "batchnorm1.weight",
            "batchnorm1.bias",
            "batchnorm1.running_mean",
            "batchnorm1.running_var",
        ];
        names
            .iter()
            .zip(values())
            .zip(&g.params)
            .map(|((n, v), p)| (*n, p.shape.clone(), v))
            .collect()
    }

    #[test]
    fn weights_round_trip_without_training_state() {
        let path = temp("plain.safetensors");
        save(&path, &graph(), &slices(&values()), None, None).expect("save");
        let loaded = load(&path, &graph()).expect("load");
        assert_eq!(loaded.params, values());
        assert_eq!((loaded.optimizer, loaded.progress), (None, None));
        let mut tmp = path.clone().into_os_string();
        tmp.push(".tmp");
        assert!(
            !Path::new(&tmp).exists(),
            "the temporary file is renamed away"
        );
    }

    #[test]
    fn adam_state_and_progress_round_trip() {
        let g = graph();
        let adam = ir::Optimizer::Adam {
            lr: 0.1,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
        };
        let OptimizerState::Adam {
            exp_avg,
            exp_avg_sq,
            ..
        } = OptimizerState::new(&adam, &g.params)
        else {
            panic!("adam")
        };
        let exp_avg: Vec<Vec<f32>> = exp_avg
            .iter()
            .map(|m| m.iter().map(|_| 0.5).collect())
            .collect();
        let state = OptimizerState::Adam {
            step: 42,
            exp_avg,
            exp_avg_sq,
        };
        let progress = Progress {
            epochs_done: 3,
            step: 42,
            seed: 7,
        };
        let path = temp("adam.safetensors");
        save(&path, &g, &slices(&values()), Some(&state), Some(&progress)).expect("save");
        let loaded = load(&path, &g).expect("load");
        assert_eq!(loaded.optimizer, Some(state));
        assert_eq!(loaded.progress, Some(progress));
    }

    #[test]
    fn sgd_buffers_round_trip_including_absent_ones() {
        let g = graph();
        let mut buffers = vec![None; g.params.len()];
        buffers[0] = Some(vec![1.0; 6]);
        let state = OptimizerState::Sgd {
            momentum_buffers: buffers,
        };
        let path = temp("sgd.safetensors");
        save(&path, &g, &slices(&values()), Some(&state), None).expect("save");
        assert_eq!(load(&path, &g).expect("load").optimizer, Some(state));
    }

    #[test]
    fn a_pytorch_state_dict_with_num_batches_tracked_loads_as_weights() {
        let path = temp("torch.safetensors");
        let mut tensors = plain_tensors();
        tensors.push(("batchnorm1.num_batches_tracked", vec![], vec![5.0]));
        write_raw(&path, &tensors);
        assert_eq!(load(&path, &graph()).expect("load").params, values());
    }

    #[test]
    fn missing_extra_shape_and_dtype_errors_name_the_tensor() {
        let path = temp("bad.safetensors");
        let mut tensors = plain_tensors();
        tensors.remove(1);
        write_raw(&path, &tensors);
        let err = load(&path, &graph()).expect_err("missing bias");
        assert!(
            matches!(&err, CheckpointError::Missing { tensor, .. } if tensor == "dense1.bias"),
            "{err}"
        );

        let mut tensors = plain_tensors();
        tensors.push(("dense2.weight", vec![2, 3], vec![0.0; 6]));
        write_raw(&path, &tensors);
        let err = load(&path, &graph()).expect_err("extra tensor").to_string();
        assert!(
            err.contains("`dense2.weight`") && err.contains("did you mean `dense1.weight`"),
            "{err}"
        );

        let mut tensors = plain_tensors();
        tensors[0].1 = vec![3, 2];
        write_raw(&path, &tensors);
        let err = load(&path, &graph()).expect_err("transposed");
        assert!(
            matches!(&err, CheckpointError::WrongShape { tensor, found, .. } if tensor == "dense1.weight" && found == &vec![3, 2])
        );

        // An F64 tensor: the same bytes relabelled in the header (8 f32 = 4 f64 worth).
        let mut tensors = plain_tensors();
        tensors[1] = ("dense1.bias", vec![4], vec![0.0; 4]);
        write_raw(&path, &tensors);
        let mut bytes = std::fs::read(&path).expect("read");
        let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
        let header = String::from_utf8(bytes[8..8 + header_len].to_vec()).expect("utf8");
        let patched = header.replacen(
            r#""dense1.bias":{"dtype":"F32","shape":[4]"#,
            r#""dense1.bias":{"dtype":"F64","shape":[2]"#,
            1,
        );
        assert_ne!(patched, header, "header layout: {header}");
        bytes.splice(8..8 + header_len, patched.into_bytes());
        std::fs::write(&path, bytes).expect("write");
        let err = load(&path, &graph()).expect_err("f64");
        assert!(
            matches!(&err, CheckpointError::WrongDtype { tensor, .. } if tensor == "dense1.bias"),
            "{err}"
        );
    }

    #[test]
    fn truncated_and_garbage_files_are_corrupt() {
        let path = temp("cut.safetensors");
        save(&path, &graph(), &slices(&values()), None, None).expect("save");
        let bytes = std::fs::read(&path).expect("read");
        std::fs::write(&path, &bytes[..bytes.len() - 3]).expect("write");
        let err = load(&path, &graph()).expect_err("truncated");
        assert!(matches!(err, CheckpointError::Corrupt { .. }), "{err}");
        std::fs::write(&path, b"garbage").expect("write");
        assert!(matches!(
            load(&path, &graph()),
            Err(CheckpointError::Corrupt { .. })
        ));
        let err = load(&temp("absent.safetensors"), &graph()).expect_err("absent");
        assert!(matches!(err, CheckpointError::Io { .. }));
    }

    #[test]
    fn saving_into_a_missing_folder_fails_and_keeps_the_old_file() {
        let path = temp("keep.safetensors");
        save(&path, &graph(), &slices(&values()), None, None).expect("save");
        let before = std::fs::read(&path).expect("read");
        let missing = temp("no-such-folder").join("w.safetensors");
        assert!(matches!(
            save(&missing, &graph(), &slices(&values()), None, None),
            Err(CheckpointError::Io { .. })
        ));
        // A stale temporary file from an interrupted save does not matter.
        let mut tmp = path.clone().into_os_string();
        tmp.push(".tmp");
        std::fs::write(&tmp, b"half written").expect("write");
        let zeros: Vec<Vec<f32>> = values().iter().map(|v| vec![0.0; v.len()]).collect();
        save(&path, &graph(), &slices(&zeros), None, None).expect("save over");
        assert_ne!(std::fs::read(&path).expect("read"), before);
        assert_eq!(load(&path, &graph()).expect("load").params, zeros);
    }

    #[test]
    fn slices_of_the_wrong_length_are_refused_not_written() {
        let path = temp("short.safetensors");
        let mut short = values();
        short[0].pop();
        let err = save(&path, &graph(), &slices(&short), None, None).expect_err("5 of 6");
        assert!(
            matches!(&err, CheckpointError::WrongShape { tensor, .. } if tensor == "dense1.weight"),
            "{err}"
        );
        let err = save_gradients(&path, &graph(), &slices(&values()[..2])).expect_err("2 of 6");
        assert!(matches!(err, CheckpointError::Inconsistent { .. }));
        assert!(!path.exists());
    }

    #[test]
    fn gradients_are_saved_for_trainable_parameters_only() {
        let path = temp("grads.safetensors");
        save_gradients(&path, &graph(), &slices(&values())).expect("save");
        let bytes = std::fs::read(&path).expect("read");
        let file = SafeTensors::deserialize(&bytes).expect("parse");
        let mut names = file.names();
        names.sort_unstable();
        assert_eq!(
            names,
            vec![
                "batchnorm1.bias",
                "batchnorm1.weight",
                "dense1.bias",
                "dense1.weight"
            ]
        );
    }
}
