//! The JIT engine against PyTorch's goldens (`tests/golden/*.safetensors`, written by
//! `scripts/golden.py`, computed in float64 and rounded to float32): for each golden network,
//! loaded through the front end, the inference output, the training output, the mean
//! cross-entropy, every parameter gradient and the batchnorm running statistics after the
//! training step. `cargo test --release --test golden -- --nocapture` prints the largest
//! difference per network.
//!
//! Tolerance: `|cnnc − PyTorch| ≤ ABSOLUTE + RELATIVE · |PyTorch|`. The engine computes in f32
//! (each product rounded, sums in loop order) and its sigmoid uses an inline polynomial `exp`;
//! a dozen layers of that stay within a few 1e-6 of values of order one. (The reference, which
//! sums in f64, is held to 1e-5 in `src/reference/golden.rs`.)

use std::collections::HashMap;
use std::path::Path;

use cnnc::ir::{Graph, Loss};
use cnnc::runtime::engine::{Engine, Truth};
use cnnc::span::SourceMap;
use rand::rngs::ChaCha8Rng;
use rand::SeedableRng;
use safetensors::{Dtype, SafeTensors};

const ABSOLUTE: f32 = 2e-5;
const RELATIVE: f32 = 1e-4;
const THREADS: usize = 2;

/// Every tensor of `tests/golden/<name>.safetensors`, flat, with its shape.
fn load_golden(name: &str) -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    let path = format!(
        "{}/tests/golden/{name}.safetensors",
        env!("CARGO_MANIFEST_DIR")
    );
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let file = SafeTensors::deserialize(&bytes).unwrap_or_else(|e| panic!("{path}: {e}"));
    file.tensors()
        .into_iter()
        .map(|(key, view)| {
            assert_eq!(view.dtype(), Dtype::F32, "{path}: {key} is not float32");
            let values = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (key, (view.shape().to_vec(), values))
        })
        .collect()
}

fn load_network(file: &str) -> Graph {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    let mut sources = SourceMap::default();
    let mut graphs =
        cnnc::load_file(&path, &mut sources).unwrap_or_else(|_| panic!("{file} does not check"));
    assert_eq!(graphs.len(), 1, "{file}: one network");
    graphs.remove(0)
}

/// The largest difference seen, and the quantity it was in.
#[derive(Default)]
struct Worst {
    gap: f32,
    what: String,
}

impl Worst {
    /// Asserts `actual` is within tolerance of `expected` and keeps the largest gap.
    fn compare(&mut self, actual: &[f32], expected: &[f32], what: &str) {
        assert_eq!(actual.len(), expected.len(), "{what}: length");
        for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
            let gap = (a - e).abs();
            assert!(
                gap <= ABSOLUTE + RELATIVE * e.abs(),
                "{what}[{i}]: cnnc {a}, PyTorch {e} (difference {gap})"
            );
            if gap > self.gap {
                self.gap = gap;
                self.what = what.to_string();
            }
        }
    }
}

/// Runs the engine on golden `name` (network in `file`) and compares all the golden holds.
fn check(name: &str, file: &str) {
    let golden = load_golden(name);
    let get = |key: &str| {
        golden
            .get(key)
            .unwrap_or_else(|| panic!("{name}: no tensor {key}"))
    };
    let graph = load_network(file);
    let (input_shape, input) = get("input");
    let batch = input_shape[0];
    let labels: Vec<u32> = get("labels").1.iter().map(|&l| l as u32).collect();
    let params: Vec<&[f32]> = graph
        .params
        .iter()
        .map(|p| {
            let (shape, values) = get(&p.name);
            assert_eq!(shape, &p.shape, "{name}: shape of {}", p.name);
            values.as_slice()
        })
        .collect();

    let mut engine = Engine::new(&graph, batch, Loss::CrossEntropy, THREADS).expect("compiles");
    let mut worst = Worst::default();
    engine.set_params(&params).expect("parameters fit");
    let output = engine.infer(input).expect("inference runs");
    worst.compare(output, &get("output_infer").1, "inference output");

    // The golden networks have no dropout, so the generator is never drawn from.
    let loss = engine
        .train_step(
            input,
            Truth::Classes(&labels),
            &mut ChaCha8Rng::seed_from_u64(0),
        )
        .expect("training step runs");
    worst.compare(engine.output(), &get("output_train").1, "training output");
    worst.compare(&[loss], &get("loss").1, "loss");
    for ((param, grad), after) in graph.params.iter().zip(engine.grads()).zip(engine.params()) {
        if param.kind.trainable() {
            let grad = grad.unwrap_or_else(|| panic!("{name}: no gradient of {}", param.name));
            let key = format!("grad.{}", param.name);
            worst.compare(grad, &get(&key).1, &key);
        } else {
            let key = format!("running_after.{}", param.name);
            worst.compare(after, &get(&key).1, &key);
        }
    }
    println!(
        "golden {name}: largest difference from PyTorch {:.3e} (in {}); tolerance {ABSOLUTE:e} + {RELATIVE:e}·|PyTorch|",
        worst.gap, worst.what
    );
}

#[test]
fn lenet_matches_pytorch() {
    check("lenet", "models/lenet.cnn");
}

#[test]
fn nin_block_matches_pytorch() {
    check("nin_block", "tests/golden/nin_block.cnn");
}

#[test]
fn inception_block_matches_pytorch() {
    check("inception_block", "tests/golden/inception_block.cnn");
}

#[test]
fn residual_bn_matches_pytorch() {
    check("residual_bn", "tests/golden/residual_bn.cnn");
}

/// Every golden file is covered by a test above (a new golden needs its test).
#[test]
fn every_golden_file_is_tested() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("tests/golden")
        .filter_map(|e| {
            let path = e.expect("directory entry").path();
            (path.extension()? == "safetensors")
                .then(|| path.file_stem()?.to_str().map(str::to_string))?
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["inception_block", "lenet", "nin_block", "residual_bn"]
    );
}
