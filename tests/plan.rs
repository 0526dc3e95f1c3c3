//! Whole plans (`lower::plan`) against `reference::forward` and `reference::backward`: hand-built
//! graphs that reach every op and every buffer-sharing case, and the golden networks of
//! `tests/golden/` and `models/lenet.cnn` through the front end. For each: the inference output,
//! then a training step (forward, loss, backward): output, mean loss, every parameter gradient
//! and the updated running statistics, through the checking interpreter and the JIT on 3
//! threads, and the JIT's buffers bitwise equal on 1 thread. Tolerance `1e-4 + 1e-3·|b|`.
//!
//! Every check runs twice: the plan of the graph as written, and the plan of the fused graph
//! (`passes::fuse`), both against the reference of the graph as written; random small networks
//! of conv, dense, batchnorm, add and activations exercise every fusion rule and its refusals,
//! and batchnorms folded into their convolutions for inference (`passes::fold`).

mod support;

use cnnc::ir::{Activation, Conv, Graph, Loss, NodeId, Op, ParamId, ParamKind, Pool, PoolKind};
use cnnc::lower::loops::{BufId, Kernel};
use cnnc::lower::{plan, BufferRole, Plan};
use cnnc::reference::fixtures::{model, plain_conv, GraphBuilder};
use cnnc::reference::{self, Mode};
use cnnc::span::SourceMap;
use ndarray::{ArrayD, IxDyn};
use support::{Rng, Twin, ATOL, GRAPH_RTOL};

/// `[batch, *shape]`
fn batched(batch: usize, shape: &[usize]) -> Vec<usize> {
    [&[batch][..], shape].concat()
}

/// input [2, 4, 4] → conv → batchnorm → tanh, concatenated with a max pool of the input; that
/// concat is added to a grouped 1×1 conv of itself (one value, two consumers, one through an
/// identity), average pooling, dropout, flatten, dense 3.
fn branching_graph() -> Graph {
    let mut b = GraphBuilder::new(&[2, 4, 4]);
    let c1 = b.conv(
        "conv1",
        NodeId(0),
        Conv {
            padding: vec![(1, 1); 2],
            ..plain_conv(2, 3, 3, 2)
        },
        &[3, 4, 4],
    );
    let bn = b.batchnorm("batchnorm1", c1, &[3, 4, 4]);
    let t = b.node("tanh1", Op::Activation(Activation::Tanh), &[bn], &[3, 4, 4]);
    let max = Pool {
        kind: PoolKind::Max,
        kernel: vec![3; 2],
        stride: vec![1; 2],
        padding: vec![1; 2],
    };
    let mp = b.node("maxpool1", Op::Pool(max), &[NodeId(0)], &[2, 4, 4]);
    let cat = b.node("concat1", Op::Concat, &[t, mp], &[5, 4, 4]);
    let c2 = b.conv(
        "conv2",
        cat,
        Conv {
            groups: 5,
            ..plain_conv(5, 5, 1, 2)
        },
        &[5, 4, 4],
    );
    let same = b.node("identity1", Op::Identity, &[cat], &[5, 4, 4]);
    let sum = b.node("add1", Op::Add, &[same, c2], &[5, 4, 4]);
    let avg = Pool {
        kind: PoolKind::Avg,
        kernel: vec![2; 2],
        stride: vec![2; 2],
        padding: vec![0; 2],
    };
    let ap = b.node("avgpool1", Op::Pool(avg), &[sum], &[5, 2, 2]);
    let drop = b.node("dropout1", Op::Dropout { p: 0.5 }, &[ap], &[5, 2, 2]);
    let flat = b.node("flatten1", Op::Flatten, &[drop], &[20]);
    b.dense("dense1", flat, 20, 3);
    b.graph
}

/// input [2, 7] (1-D) → conv with dilation → sigmoid → global average pool → relu → softmax
/// → identity (the output shares its buffers with the softmax).
fn one_dimensional_graph() -> Graph {
    let mut b = GraphBuilder::new(&[2, 7]);
    let weight = b.param("conv1", ParamKind::Weight, &[3, 2, 2]);
    let conv = Conv {
        in_channels: 2,
        out_channels: 3,
        kernel: vec![2],
        stride: vec![1],
        padding: vec![(1, 1)],
        dilation: vec![2],
        groups: 1,
        weight,
        bias: None,
    };
    let c = b.node("conv1", Op::Conv(conv), &[NodeId(0)], &[3, 7]);
    let s = b.node(
        "sigmoid1",
        Op::Activation(Activation::Sigmoid),
        &[c],
        &[3, 7],
    );
    let g = b.node("global_avgpool1", Op::GlobalAvgPool, &[s], &[3]);
    let r = b.node("relu1", Op::Activation(Activation::Relu), &[g], &[3]);
    let s = b.node("softmax1", Op::Activation(Activation::Softmax), &[r], &[3]);
    b.node("identity1", Op::Identity, &[s], &[3]);
    b.graph
}

/// A plan's buffer table run by both engines (`support::Twin`), with tensors by role.
struct PlanRun<'a> {
    plan: &'a Plan,
    twin: Twin,
    /// What `set` put in each buffer before any kernel ran.
    initial: Vec<Vec<f32>>,
}

impl<'a> PlanRun<'a> {
    fn new(plan: &'a Plan, threads: usize) -> PlanRun<'a> {
        let lens: Vec<usize> = plan.buffers.iter().map(|b| b.len).collect();
        PlanRun {
            plan,
            twin: Twin::new(&lens, threads),
            initial: lens.iter().map(|&len| vec![0.0; len]).collect(),
        }
    }

    fn buffer(&self, role: BufferRole) -> BufId {
        self.plan
            .buffer(role)
            .unwrap_or_else(|| panic!("no buffer for {role:?}"))
    }

    /// Fills a buffer the runtime fills, remembering it for [`assert_thread_count_does_not_matter`].
    fn set(&mut self, role: BufferRole, a: &ArrayD<f32>) {
        let data: Vec<f32> = a.as_standard_layout().iter().copied().collect();
        let buf = self.buffer(role);
        self.twin.set(buf, &data);
        self.initial[buf.0 as usize] = data;
    }

    fn check(&self, role: BufferRole, expected: &ArrayD<f32>, what: &str) {
        self.twin
            .check(self.buffer(role), expected, GRAPH_RTOL, what);
    }

    fn run(&mut self, schedule: &[usize]) {
        let kernels: Vec<&Kernel> = schedule.iter().map(|&k| &self.plan.kernels[k]).collect();
        self.twin.run(&kernels);
    }
}

/// Trainable parameters in [−1, 1), running mean in [−0.5, 0.5), variance in [0.5, 1.5).
fn init(graph: &Graph, rng: &mut Rng) -> Vec<ArrayD<f32>> {
    graph
        .params
        .iter()
        .map(|p| match p.kind {
            ParamKind::Weight | ParamKind::Bias => rng.tensor(&p.shape, -1., 1.),
            ParamKind::RunningMean => rng.tensor(&p.shape, -0.5, 0.5),
            ParamKind::RunningVar => rng.tensor(&p.shape, 0.5, 1.5),
        })
        .collect()
}

/// [`check_lowered`] for `graph` as written and after the fusion passes.
fn check_plan(graph: &Graph, batch: usize, kind: Loss, seed: u64) {
    check_lowered(graph, graph, batch, kind, seed);
    check_lowered(graph, &cnnc::passes::fuse(graph), batch, kind, seed);
}

/// Inference, then a training step (forward, loss, backward) of `lowered`'s plan, checked
/// against the reference of `graph` (the same nodes and parameters, `lowered` being `graph`
/// or its fused form): outputs, the mean loss, every parameter gradient and the updated
/// running statistics.
fn check_lowered(graph: &Graph, lowered: &Graph, batch: usize, kind: Loss, seed: u64) {
    let mut rng = Rng(seed);
    let plan = plan(lowered, batch, kind);
    let params = init(graph, &mut rng);
    let x = rng.distinct(&batched(batch, &graph.input().shape.0));
    let masks: Vec<Option<ArrayD<f32>>> = graph
        .nodes
        .iter()
        .map(|node| match node.op {
            Op::Dropout { p } => Some(ArrayD::from_shape_fn(
                IxDyn(&batched(batch, &node.shape.0)),
                |_| {
                    if rng.uniform(0., 1.) < p {
                        0.
                    } else {
                        1. / (1. - p)
                    }
                },
            )),
            _ => None,
        })
        .collect();
    let output_shape = batched(batch, &graph.output_shape().0);
    let classes = output_shape[1..].iter().product();
    let labels: Vec<usize> = (0..batch).map(|_| rng.below(classes)).collect();
    let target = rng.tensor(&output_shape, 0., 1.);

    let mut run = PlanRun::new(&plan, 3);
    run.set(BufferRole::Input, &x);
    for (i, p) in params.iter().enumerate() {
        run.set(BufferRole::Param(ParamId(i as u32)), p);
    }
    for (i, mask) in masks.iter().enumerate() {
        if let Some(mask) = mask {
            run.set(BufferRole::Mask(NodeId(i as u32)), mask);
        }
    }
    match kind {
        Loss::CrossEntropy => {
            let values = labels.iter().map(|&l| l as f32).collect();
            let labels = ArrayD::from_shape_vec(IxDyn(&[batch]), values).expect("one per sample");
            run.set(BufferRole::Labels, &labels);
        }
        Loss::Mse => run.set(BufferRole::Target, &target),
    }
    let output = BufferRole::Value(graph.output);

    let mut untouched = params.clone();
    let inferred = reference::forward(graph, &mut untouched, &x, Mode::Infer, &masks);
    run.run(&plan.infer);
    run.check(
        output,
        &inferred[graph.output.0 as usize],
        "inference output",
    );

    let mut updated = params.clone();
    let values = reference::forward(graph, &mut updated, &x, Mode::Train, &masks);
    let y = &values[graph.output.0 as usize];
    let (loss, grad_output) = match kind {
        Loss::CrossEntropy => reference::loss::cross_entropy(y, &labels),
        Loss::Mse => reference::loss::mse(y, &target),
    };
    let grads = reference::backward(graph, &params, &values, &masks, grad_output);
    run.run(&plan.train_forward);
    run.run(&[plan.loss]);
    run.run(&plan.backward);
    run.check(output, y, "training output");
    // The plan keeps per-sample losses; their mean is the loss.
    for losses in run.twin.get(run.buffer(BufferRole::Loss), &[batch]) {
        let mean = losses.mean().expect("batch is not empty");
        assert!(
            (mean - loss).abs() <= ATOL + GRAPH_RTOL * loss.abs(),
            "loss {mean} vs {loss}"
        );
    }
    for (i, declared) in graph.params.iter().enumerate() {
        let id = ParamId(i as u32);
        match &grads.params[i] {
            Some(expected) => run.check(
                BufferRole::ParamGrad(id),
                expected,
                &format!("{} gradient", declared.name),
            ),
            None => run.check(BufferRole::Param(id), &updated[i], &declared.name),
        }
    }
    assert_thread_count_does_not_matter(&plan, &run);
}

/// The same training step on 1 thread gives bitwise the same buffers as on `run`'s threads.
fn assert_thread_count_does_not_matter(plan: &Plan, run: &PlanRun) {
    // Start from the state `run` started from: everything the runtime fills.
    let mut single = PlanRun::new(plan, 1);
    let filled = |role: &BufferRole| {
        matches!(
            role,
            BufferRole::Input
                | BufferRole::Param(_)
                | BufferRole::Mask(_)
                | BufferRole::Labels
                | BufferRole::Target
        )
    };
    for (i, decl) in plan.buffers.iter().enumerate() {
        if filled(&decl.role) {
            single.twin.set(BufId(i as u32), &run.initial[i]);
        }
    }
    single.run(&plan.infer);
    single.run(&plan.train_forward);
    single.run(&[plan.loss]);
    single.run(&plan.backward);
    for (i, decl) in plan.buffers.iter().enumerate() {
        let same = single.twin.jit[i]
            .iter()
            .zip(&run.twin.jit[i])
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(
            same,
            "{}: 1 thread and {} threads differ",
            decl.name, run.twin.threads
        );
    }
}

#[test]
fn branching_plan_matches_reference_with_cross_entropy() {
    check_plan(&branching_graph(), 3, Loss::CrossEntropy, 1);
}

#[test]
fn branching_plan_matches_reference_with_mse() {
    check_plan(&branching_graph(), 2, Loss::Mse, 2);
}

#[test]
fn one_dimensional_plan_matches_reference() {
    check_plan(&one_dimensional_graph(), 3, Loss::CrossEntropy, 3);
    check_plan(&one_dimensional_graph(), 2, Loss::Mse, 4);
}

/// Flatten and identity share their input's buffers; every node after a trainable parameter
/// has a gradient, and the input and its max pooling have none.
#[test]
fn aliases_share_buffers_and_the_input_has_no_gradient() {
    let graph = branching_graph();
    let plan = plan(&graph, 2, Loss::CrossEntropy);
    let id = |name: &str| {
        NodeId(
            graph
                .nodes
                .iter()
                .position(|n| n.name == name)
                .expect("node") as u32,
        )
    };
    for (alias, source) in [("flatten1", "dropout1"), ("identity1", "concat1")] {
        assert_eq!(
            plan.buffer(BufferRole::Value(id(alias))),
            plan.buffer(BufferRole::Value(id(source)))
        );
        assert_eq!(
            plan.buffer(BufferRole::Grad(id(alias))),
            plan.buffer(BufferRole::Grad(id(source)))
        );
    }
    assert_eq!(
        plan.buffer(BufferRole::Value(NodeId(0))),
        plan.buffer(BufferRole::Input)
    );
    assert_eq!(plan.buffer(BufferRole::Grad(NodeId(0))), None);
    assert_eq!(plan.buffer(BufferRole::Grad(id("maxpool1"))), None);
    assert!(plan.buffer(BufferRole::Grad(id("conv1"))).is_some());
    assert!(plan.buffers.iter().all(|b| !b.name.contains("flatten1")));
}

#[test]
fn golden_networks_match_reference() {
    check_plan(
        &model("tests/golden/nin_block.cnn"),
        2,
        Loss::CrossEntropy,
        5,
    );
    check_plan(
        &model("tests/golden/inception_block.cnn"),
        2,
        Loss::CrossEntropy,
        6,
    );
    check_plan(&model("tests/golden/residual_bn.cnn"), 3, Loss::Mse, 7);
}

#[test]
fn lenet_matches_reference() {
    check_plan(&model("models/lenet.cnn"), 2, Loss::CrossEntropy, 8);
}

/// The backward scatters of a padded strided max pool and a padded strided convolution (whose
/// writes reach into the padding, under `InBounds` guards) are split across threads: each
/// kernel runs a parallel piece, and the step matches the reference and, bitwise, one thread.
#[test]
fn padded_strided_backward_kernels_run_in_parallel() {
    let source = "network padded {
        input [2, 7, 7]
        conv 3 kernel=3 stride=2 padding=1   # [3, 4, 4]
        relu
        conv 4 kernel=3 stride=2 padding=1   # [4, 2, 2]
        maxpool kernel=3 stride=2 padding=1  # [4, 1, 1]
        flatten
        dense 3
    }";
    let mut sources = SourceMap::default();
    let graph = cnnc::load_str("padded.cnn", source, &mut sources)
        .unwrap_or_else(|e| panic!("{e:?}"))
        .into_iter()
        .next()
        .expect("the source defines a network");
    check_plan(&graph, 3, Loss::CrossEntropy, 9);
    let plan = plan(&graph, 3, Loss::CrossEntropy);
    let lens: Vec<usize> = plan.buffers.iter().map(|b| b.len).collect();
    for name in ["conv2.backward_input", "maxpool1.backward_input"] {
        let kernel = plan
            .kernels
            .iter()
            .find(|k| k.name == name)
            .unwrap_or_else(|| panic!("no kernel {name}"));
        let clif = cnnc::jit::clif_text(kernel, &lens).expect("kernel compiles");
        assert!(
            clif.contains(": parallel over"),
            "{name} is not split:\n{clif}"
        );
    }
}

#[test]
fn modern_lenet_matches_reference() {
    check_plan(&model("models/lenet_modern.cnn"), 2, Loss::CrossEntropy, 9);
}

/// An activation drawn from every kind, including those the fusion pass refuses (softmax,
/// leaky relu with a slope ≤ 0).
fn random_activation(rng: &mut Rng) -> Activation {
    match rng.below(7) {
        0 => Activation::Relu,
        1 => Activation::LeakyRelu { slope: 0.1 },
        2 => Activation::LeakyRelu { slope: -0.5 },
        3 => Activation::LeakyRelu { slope: 0.0 },
        4 => Activation::Sigmoid,
        5 => Activation::Tanh,
        _ => Activation::Softmax,
    }
}

/// `x`, or (three times in four) a random activation of `x`.
fn activate(b: &mut GraphBuilder, rng: &mut Rng, x: NodeId, name: String) -> NodeId {
    let shape = b.graph.node(x).shape.0.clone();
    let op = Op::Activation(random_activation(rng));
    if rng.below(4) == 0 {
        x
    } else {
        b.node(&name, op, &[x], &shape)
    }
}

/// input [2, 4, 4] → 2 to 4 blocks of conv 3×3 (padding 1), maybe batchnorm, maybe an add of
/// an earlier block's value (which then has two consumers), maybe an activation → flatten →
/// dense, maybe an activation → dense, maybe an activation.
fn random_network(rng: &mut Rng) -> Graph {
    let mut b = GraphBuilder::new(&[2, 4, 4]);
    let (mut x, mut channels) = (NodeId(0), 2);
    let mut earlier: Vec<(NodeId, usize)> = Vec::new();
    for i in 0..2 + rng.below(3) {
        let out = 2 + rng.below(2);
        let shape = [out, 4, 4];
        let conv = Conv {
            padding: vec![(1, 1); 2],
            ..plain_conv(channels, out, 3, 2)
        };
        x = b.conv(&format!("conv{i}"), x, conv, &shape);
        channels = out;
        if rng.below(2) == 0 {
            x = b.batchnorm(&format!("batchnorm{i}"), x, &shape);
        }
        let same: Vec<NodeId> = earlier.iter().filter(|e| e.1 == out).map(|e| e.0).collect();
        if !same.is_empty() && rng.below(2) == 0 {
            let other = same[rng.below(same.len())];
            x = b.node(&format!("add{i}"), Op::Add, &[x, other], &shape);
        }
        x = activate(&mut b, rng, x, format!("activation{i}"));
        earlier.push((x, out));
    }
    let flat = b.node("flatten", Op::Flatten, &[x], &[channels * 16]);
    let hidden = b.dense("dense1", flat, channels * 16, 4);
    let hidden = activate(&mut b, rng, hidden, "activation_dense1".into());
    let out = b.dense("dense2", hidden, 4, 3);
    activate(&mut b, rng, out, "activation_dense2".into());
    b.graph
}

/// Random networks through [`check_plan`] (fused and not); at least a quarter of their
/// activations are fused, and some are refused, so both paths are exercised.
#[test]
fn random_networks_fused_and_unfused_match_reference() {
    let (mut activations, mut fused, mut folded) = (0, 0, 0);
    for seed in 0..12 {
        let graph = random_network(&mut Rng(100 + seed));
        let loss = if seed % 3 == 0 {
            Loss::Mse
        } else {
            Loss::CrossEntropy
        };
        check_plan(&graph, 2, loss, seed);
        let after = cnnc::passes::fuse(&graph);
        activations += graph
            .nodes
            .iter()
            .filter(|n| matches!(n.op, Op::Activation(_)))
            .count();
        fused += after.nodes.iter().filter(|n| n.epilogue.is_some()).count();
        folded += after.nodes.iter().filter(|n| n.folded).count();
    }
    // Batchnorms folded into their convolutions for inference (`passes::fold`) are checked too.
    assert!(folded > 0, "no batchnorm was folded");
    assert!(4 * fused >= activations, "{fused} of {activations} fused");
    assert!(fused < activations, "every activation was fused");
}
