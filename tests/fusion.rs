//! The seed models trained one step by the JIT engine with and without the fusion passes:
//! the same loss, output and parameter gradients within `1e-4 + 1e-3·|unfused|` (the fused
//! kernels round differently: an activation applied before the store, a gradient formed
//! from the output). `tests/plan.rs` checks every fusion against the reference.

use cnnc::ir::Loss;
use cnnc::reference::fixtures::model;
use cnnc::runtime::engine::{Engine, Fusion, Memory, Truth};
use cnnc::runtime::init::initialize;
use rand::rngs::ChaCha8Rng;
use rand::SeedableRng;

const ATOL: f32 = 1e-4;
const RTOL: f32 = 1e-3;
const THREADS: usize = 2;

fn assert_close(fused: &[f32], unfused: &[f32], what: &str) {
    assert_eq!(fused.len(), unfused.len(), "{what}: length");
    for (i, (a, b)) in fused.iter().zip(unfused).enumerate() {
        assert!(
            (a - b).abs() <= ATOL + RTOL * b.abs(),
            "{what}[{i}]: fused {a} vs unfused {b}"
        );
    }
}

/// One training step of `file` at `batch` on both engines, from the same initial parameters.
fn same_step_fused_and_unfused(file: &str, batch: usize) {
    let graph = model(file);
    assert_ne!(
        cnnc::passes::fuse(&graph),
        graph,
        "{file}: nothing to fuse, nothing tested"
    );
    let params = initialize(&graph, cnnc::ir::Init::PyTorch, 3);
    let numel = graph.input().shape.numel();
    let input: Vec<f32> = (0..batch * numel)
        .map(|i| ((i * 37) % 101) as f32 / 101.0)
        .collect();
    let classes = graph.output_shape().numel() as u32;
    let labels: Vec<u32> = (0..batch as u32).map(|i| (i * 7) % classes).collect();
    let step = |fusion| {
        let mut engine = Engine::with_options(
            &graph,
            batch,
            Loss::CrossEntropy,
            THREADS,
            fusion,
            Memory::Planned,
        )
        .expect("compiles");
        engine.set_params(&params).expect("parameters fit");
        let inferred = engine.infer(&input).expect("inference runs").to_vec();
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let loss = engine
            .train_step(&input, Truth::Classes(&labels), &mut rng)
            .expect("training step runs");
        let grads: Vec<Option<Vec<f32>>> = engine
            .grads()
            .iter()
            .map(|g| g.map(<[f32]>::to_vec))
            .collect();
        (inferred, loss, engine.output().to_vec(), grads)
    };
    let (fused, unfused) = (step(Fusion::On), step(Fusion::Off));
    assert_close(&fused.0, &unfused.0, "inference output");
    assert_close(&[fused.1], &[unfused.1], "loss");
    assert_close(&fused.2, &unfused.2, "training output");
    for ((param, a), b) in graph.params.iter().zip(&fused.3).zip(&unfused.3) {
        match (a, b) {
            (Some(a), Some(b)) => assert_close(a, b, &format!("{} gradient", param.name)),
            (None, None) => {}
            _ => panic!("{}: a gradient in one engine only", param.name),
        }
    }
}

#[test]
fn lenet_fused_and_unfused_agree() {
    same_step_fused_and_unfused("models/lenet.cnn", 4);
}

#[test]
fn modern_lenet_fused_and_unfused_agree() {
    same_step_fused_and_unfused("models/lenet_modern.cnn", 4);
}

#[test]
fn resnet18_fused_and_unfused_agree() {
    same_step_fused_and_unfused("models/resnet18.cnn", 1);
}
