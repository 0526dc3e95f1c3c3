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
//!
//! `save.rs` writes checkpoints and gradients, `load.rs` reads and checks them against a
//! network, `error.rs` names what can go wrong, `file.rs` is the safetensors and atomic-write
//! layer under both.

mod error;
mod file;
mod load;
mod save;

pub use error::CheckpointError;
pub use load::load;
pub use save::{save, save_gradients};

use crate::runtime::optim::OptimizerState;

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

#[cfg(test)]
mod tests {
    use super::file::{save_tensors, F32};
    use super::*;
    use crate::ir::{self, Graph};
    use crate::span::SourceMap;
    use safetensors::tensor::SafeTensors;
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};

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
