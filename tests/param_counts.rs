//! cnnc and PyTorch agree about parameters, with no Python at test time:
//! - every seed network in `models/` has the trainable parameter count of the same network
//!   built in PyTorch from d2l's definition (`scripts/torch_models.py` writes
//!   `tests/golden/param_counts.json`, `{model file stem: count}`);
//! - every golden file of `scripts/golden.py` holds exactly the parameters and buffers that
//!   cnnc lists for its network, under the same names and shapes, and a gradient for exactly
//!   the trainable ones, so the engine's golden tests compare like with like.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use cnnc::ir::Graph;
use cnnc::span::SourceMap;
use safetensors::SafeTensors;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `{model file stem: trainable parameter count}` as PyTorch counts them.
fn torch_counts() -> BTreeMap<String, usize> {
    let path = repo().join("tests/golden/param_counts.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The stems of `models/*.cnn`, sorted.
fn model_stems() -> Vec<String> {
    let dir = repo().join("models");
    let mut stems: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "cnn"))
        .map(|path| {
            path.file_stem()
                .expect("a .cnn file has a stem")
                .to_string_lossy()
                .into()
        })
        .collect();
    stems.sort();
    stems
}

/// The file's one network, as cnnc's front end builds it.
fn load_network(path: &Path) -> Graph {
    let mut sources = SourceMap::default();
    let mut graphs = cnnc::load_file(path, &mut sources).unwrap_or_else(|diagnostics| {
        let messages: Vec<String> = diagnostics
            .iter()
            .map(|d| format!("{}: {}", d.code.as_str(), d.message))
            .collect();
        panic!(
            "{} does not check:\n{}",
            path.display(),
            messages.join("\n")
        )
    });
    assert_eq!(
        graphs.len(),
        1,
        "{} should define one network",
        path.display()
    );
    graphs.swap_remove(0)
}

/// Trainable parameters (weights and biases, not batchnorm buffers), as cnnc counts them.
fn cnnc_trainable_count(path: &Path) -> usize {
    load_network(path)
        .params
        .iter()
        .filter(|param| param.kind.trainable())
        .map(|param| param.numel())
        .sum()
}

#[test]
fn every_seed_network_has_a_pytorch_count_and_every_count_a_network() {
    let stems = model_stems();
    let counted: Vec<String> = torch_counts().into_keys().collect();
    assert_eq!(
        stems, counted,
        "models/*.cnn and tests/golden/param_counts.json list different networks; \
         add the network to scripts/torch_models.py and rerun it"
    );
}

#[test]
fn trainable_parameter_counts_equal_pytorch() {
    let mut mismatches = Vec::new();
    for (stem, torch) in torch_counts() {
        let path = repo().join("models").join(format!("{stem}.cnn"));
        if !path.exists() {
            continue; // reported by the listing test above
        }
        let cnnc = cnnc_trainable_count(&path);
        if cnnc != torch {
            mismatches.push(format!("{stem}: cnnc {cnnc}, PyTorch {torch}"));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

/// The golden networks of `scripts/golden.py`: (golden file stem, `.cnn` file).
const GOLDEN_NETWORKS: [(&str, &str); 4] = [
    ("lenet", "models/lenet.cnn"),
    ("nin_block", "tests/golden/nin_block.cnn"),
    ("inception_block", "tests/golden/inception_block.cnn"),
    ("residual_bn", "tests/golden/residual_bn.cnn"),
];

/// Tensors of a golden file that are not parameters, buffers or their derived values.
const GOLDEN_DATA: [&str; 5] = ["input", "labels", "output_infer", "output_train", "loss"];

/// `{tensor name: shape}` of a golden safetensors file.
fn golden_tensors(stem: &str) -> BTreeMap<String, Vec<usize>> {
    let path = repo()
        .join("tests/golden")
        .join(format!("{stem}.safetensors"));
    let bytes =
        std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let tensors =
        SafeTensors::deserialize(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    tensors
        .tensors()
        .into_iter()
        .map(|(name, view)| (name, view.shape().to_vec()))
        .collect()
}

#[test]
fn golden_files_use_cnnc_names_and_shapes() {
    for (stem, cnn) in GOLDEN_NETWORKS {
        let graph = load_network(&repo().join(cnn));
        let golden = golden_tensors(stem);
        let shape_of = |name: &str| golden.get(name).cloned();

        let params: BTreeSet<&str> = graph.params.iter().map(|p| p.name.as_str()).collect();
        let stored: BTreeSet<&str> = golden
            .keys()
            .map(String::as_str)
            .filter(|name| !GOLDEN_DATA.contains(name))
            .filter(|name| !name.starts_with("grad.") && !name.starts_with("running_after."))
            .collect();
        assert_eq!(
            params, stored,
            "{stem}: parameter names of cnnc vs the golden file"
        );

        for param in &graph.params {
            assert_eq!(
                shape_of(&param.name).as_ref(),
                Some(&param.shape),
                "{stem}: shape of {}",
                param.name
            );
            let derived = if param.kind.trainable() {
                format!("grad.{}", param.name)
            } else {
                format!("running_after.{}", param.name)
            };
            assert_eq!(
                shape_of(&derived).as_ref(),
                Some(&param.shape),
                "{stem}: {derived} missing or of the wrong shape"
            );
        }
        let derived_count = golden.len() - GOLDEN_DATA.len() - stored.len();
        assert_eq!(
            derived_count,
            graph.params.len(),
            "{stem}: one grad./running_after. tensor per parameter, no others"
        );

        let batch = shape_of("input").expect("input")[0];
        let mut input = vec![batch];
        input.extend(&graph.input().shape.0);
        assert_eq!(shape_of("input"), Some(input), "{stem}: input shape");
        let mut output = vec![batch];
        output.extend(&graph.output_shape().0);
        assert_eq!(
            shape_of("output_infer"),
            Some(output.clone()),
            "{stem}: output_infer"
        );
        assert_eq!(
            shape_of("output_train"),
            Some(output),
            "{stem}: output_train"
        );
        assert_eq!(shape_of("labels"), Some(vec![batch]), "{stem}: labels");
        assert_eq!(shape_of("loss"), Some(vec![1]), "{stem}: loss");
    }
}
