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

use std::path::Path;

use cnnc::ir::Loss;
use cnnc::reference::fixtures::{golden, model};
use cnnc::runtime::engine::{Engine, Truth};
use rand::rngs::ChaCha8Rng;
use rand::SeedableRng;

const ABSOLUTE: f32 = 2e-5;
const RELATIVE: f32 = 1e-4;
const THREADS: usize = 2;

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
    let golden = golden(name);
    let tensor = |key: &str| {
        golden
            .get(key)
            .unwrap_or_else(|| panic!("{name}: no tensor {key}"))
    };
    let get = |key: &str| {
        tensor(key)
            .as_slice()
            .expect("golden tensors are contiguous")
    };
    let graph = model(file);
    let input = get("input");
    let batch = tensor("input").shape()[0];
    let labels: Vec<u32> = get("labels").iter().map(|&l| l as u32).collect();
    let params: Vec<&[f32]> = graph
        .params
        .iter()
        .map(|p| {
            assert_eq!(
                tensor(&p.name).shape(),
                p.shape,
                "{name}: shape of {}",
                p.name
            );
            get(&p.name)
        })
        .collect();

    let mut engine = Engine::new(&graph, batch, Loss::CrossEntropy, THREADS).expect("compiles");
    let mut worst = Worst::default();
    engine.set_params(&params).expect("parameters fit");
    let output = engine.infer(input).expect("inference runs");
    worst.compare(output, get("output_infer"), "inference output");

    // The golden networks have no dropout, so the generator is never drawn from.
    let loss = engine
        .train_step(
            input,
            Truth::Classes(&labels),
            &mut ChaCha8Rng::seed_from_u64(0),
        )
        .expect("training step runs");
    worst.compare(engine.output(), get("output_train"), "training output");
    worst.compare(&[loss], get("loss"), "loss");
    for ((param, grad), after) in graph.params.iter().zip(engine.grads()).zip(engine.params()) {
        if param.kind.trainable() {
            let grad = grad.unwrap_or_else(|| panic!("{name}: no gradient of {}", param.name));
            let key = format!("grad.{}", param.name);
            worst.compare(grad, get(&key), &key);
        } else {
            let key = format!("running_after.{}", param.name);
            worst.compare(after, get(&key), &key);
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
