//! The reference against PyTorch: hand-built twins of the golden networks of `tests/golden/`
//! (written by `scripts/golden.py`, computed in float64 and rounded to float32), checked in
//! inference and training mode: outputs, loss, every gradient and the updated running
//! statistics. The graphs are built by hand so that this oracle check needs no front end.

use ndarray::{ArrayD, IxDyn};

use super::fixtures::{golden, plain_conv, GraphBuilder};
use super::{backward, forward, loss, Mode};
use crate::ir::{Activation, Conv, Graph, NodeId, Op, Pool, PoolKind};

/// Largest allowed gap from the goldens. The reference rounds every node's value to f32
/// (relative 6e-8) and sums in f64; through a dozen layers that stays well below 1e-5.
const TOLERANCE: f32 = 1e-5;

fn close(actual: &ArrayD<f32>, expected: &ArrayD<f32>, what: &str) {
    assert_eq!(actual.shape(), expected.shape(), "{what}: shape");
    let gap = actual
        .iter()
        .zip(expected)
        .map(|(a, e)| (a - e).abs())
        .fold(0f32, f32::max);
    assert!(gap <= TOLERANCE, "{what}: differs from PyTorch by {gap}");
}

/// Runs `graph` on the golden named `name` and compares everything the golden holds.
fn check(graph: &Graph, name: &str) {
    let golden = golden(name);
    let get = |key: &str| {
        golden
            .get(key)
            .unwrap_or_else(|| panic!("{name}: no tensor {key}"))
    };
    let params: Vec<ArrayD<f32>> = graph.params.iter().map(|p| get(&p.name).clone()).collect();
    let input = get("input");
    let labels: Vec<usize> = get("labels").iter().map(|&l| l as usize).collect();

    let values = forward(graph, &mut params.clone(), input, Mode::Infer, &[]);
    close(
        &values[graph.output.0 as usize],
        get("output_infer"),
        "inference output",
    );

    let mut updated = params.clone();
    let values = forward(graph, &mut updated, input, Mode::Train, &[]);
    let output = &values[graph.output.0 as usize];
    close(output, get("output_train"), "training output");
    let (mean_loss, grad_output) = loss::cross_entropy(output, &labels);
    close(
        &ArrayD::from_elem(IxDyn(&[1]), mean_loss),
        get("loss"),
        "loss",
    );

    let grads = backward(graph, &params, &values, &[], grad_output);
    for (index, param) in graph.params.iter().enumerate() {
        match &grads.params[index] {
            Some(g) => close(
                g,
                get(&format!("grad.{}", param.name)),
                &format!("gradient of {}", param.name),
            ),
            None => close(
                &updated[index],
                get(&format!("running_after.{}", param.name)),
                &param.name,
            ),
        }
    }
}

/// A 2-D convolution with `kernel`, `stride` and `padding` on both axes.
fn conv(
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Conv {
    Conv {
        stride: vec![stride; 2],
        padding: vec![(padding, padding); 2],
        ..plain_conv(in_channels, out_channels, kernel, 2)
    }
}

fn relu(b: &mut GraphBuilder, name: &str, input: NodeId, shape: &[usize]) -> NodeId {
    b.node(name, Op::Activation(Activation::Relu), &[input], shape)
}

/// Conv then relu, named `<path>.conv<i>` and `<path>.relu<i>`.
fn conv_relu(
    b: &mut GraphBuilder,
    path: &str,
    i: usize,
    input: NodeId,
    c: Conv,
    shape: &[usize],
) -> NodeId {
    let c = b.conv(&format!("{path}.conv{i}"), input, c, shape);
    relu(b, &format!("{path}.relu{i}"), c, shape)
}

/// tests/golden/residual_bn.cnn: an identity residual and a strided 1×1-shortcut residual,
/// both with batchnorm.
#[test]
fn residual_blocks_with_batchnorm_match_pytorch() {
    let mut b = GraphBuilder::new(&[3, 6, 6]);
    let c = b.conv("conv1", NodeId(0), conv(3, 4, 3, 1, 1), &[4, 6, 6]);
    let s = [4, 6, 6];
    let x = b.conv("residual1.conv1", c, conv(4, 4, 3, 1, 1), &s);
    let x = b.batchnorm("residual1.batchnorm1", x, &s);
    let x = relu(&mut b, "residual1.relu1", x, &s);
    let x = b.conv("residual1.conv2", x, conv(4, 4, 3, 1, 1), &s);
    let x = b.batchnorm("residual1.batchnorm2", x, &s);
    let shortcut = b.node("residual1.identity1", Op::Identity, &[c], &s);
    let sum = b.node("residual1", Op::Add, &[x, shortcut], &s);
    let r = relu(&mut b, "relu1", sum, &s);
    let s = [6, 3, 3];
    let x = b.conv("branch1.conv1", r, conv(4, 6, 3, 2, 1), &s);
    let x = b.batchnorm("branch1.batchnorm1", x, &s);
    let x = relu(&mut b, "branch1.relu1", x, &s);
    let x = b.conv("branch1.conv2", x, conv(6, 6, 3, 1, 1), &s);
    let x = b.batchnorm("branch1.batchnorm2", x, &s);
    let shortcut = b.conv("branch2.conv1", r, conv(4, 6, 1, 2, 0), &s);
    let sum = b.node("add1", Op::Add, &[x, shortcut], &s);
    let x = relu(&mut b, "relu2", sum, &s);
    let x = b.node("global_avgpool1", Op::GlobalAvgPool, &[x], &[6]);
    b.dense("dense1", x, 6, 3);
    check(&b.graph, "residual_bn");
}

/// tests/golden/inception_block.cnn: `inception(2, (3, 4), (2, 3), 2)`, then global average
/// pooling and dense 5.
#[test]
fn inception_block_matches_pytorch() {
    let mut b = GraphBuilder::new(&[4, 6, 6]);
    let input = NodeId(0);
    let p = "inception1";
    let b1 = conv_relu(
        &mut b,
        &format!("{p}.branch1"),
        1,
        input,
        conv(4, 2, 1, 1, 0),
        &[2, 6, 6],
    );
    let x = conv_relu(
        &mut b,
        &format!("{p}.branch2"),
        1,
        input,
        conv(4, 3, 1, 1, 0),
        &[3, 6, 6],
    );
    let b2 = conv_relu(
        &mut b,
        &format!("{p}.branch2"),
        2,
        x,
        conv(3, 4, 3, 1, 1),
        &[4, 6, 6],
    );
    let x = conv_relu(
        &mut b,
        &format!("{p}.branch3"),
        1,
        input,
        conv(4, 2, 1, 1, 0),
        &[2, 6, 6],
    );
    let b3 = conv_relu(
        &mut b,
        &format!("{p}.branch3"),
        2,
        x,
        conv(2, 3, 5, 1, 2),
        &[3, 6, 6],
    );
    let max = Pool {
        kind: PoolKind::Max,
        kernel: vec![3, 3],
        stride: vec![1, 1],
        padding: vec![1, 1],
    };
    let x = b.node(
        &format!("{p}.branch4.maxpool1"),
        Op::Pool(max),
        &[input],
        &[4, 6, 6],
    );
    let b4 = conv_relu(
        &mut b,
        &format!("{p}.branch4"),
        1,
        x,
        conv(4, 2, 1, 1, 0),
        &[2, 6, 6],
    );
    let cat = b.node(p, Op::Concat, &[b1, b2, b3, b4], &[11, 6, 6]);
    let x = b.node("global_avgpool1", Op::GlobalAvgPool, &[cat], &[11]);
    b.dense("dense1", x, 11, 5);
    check(&b.graph, "inception_block");
}

/// tests/golden/nin_block.cnn: two NiN blocks around a strided max pool, then global average
/// pooling (no dense: one channel per class).
#[test]
fn nin_blocks_match_pytorch() {
    let mut b = GraphBuilder::new(&[3, 11, 11]);
    let x = conv_relu(
        &mut b,
        "nin1",
        1,
        NodeId(0),
        conv(3, 8, 5, 2, 1),
        &[8, 5, 5],
    );
    let x = conv_relu(&mut b, "nin1", 2, x, conv(8, 8, 1, 1, 0), &[8, 5, 5]);
    let x = conv_relu(&mut b, "nin1", 3, x, conv(8, 8, 1, 1, 0), &[8, 5, 5]);
    let max = Pool {
        kind: PoolKind::Max,
        kernel: vec![3, 3],
        stride: vec![2, 2],
        padding: vec![0, 0],
    };
    let x = b.node("maxpool1", Op::Pool(max), &[x], &[8, 2, 2]);
    let x = conv_relu(&mut b, "nin2", 1, x, conv(8, 6, 3, 1, 1), &[6, 2, 2]);
    let x = conv_relu(&mut b, "nin2", 2, x, conv(6, 6, 1, 1, 0), &[6, 2, 2]);
    let x = conv_relu(&mut b, "nin2", 3, x, conv(6, 6, 1, 1, 0), &[6, 2, 2]);
    b.node("global_avgpool1", Op::GlobalAvgPool, &[x], &[6]);
    check(&b.graph, "nin_block");
}

/// models/lenet.cnn: d2l's LeNet-5 (sigmoid, average pooling) with Xavier weights.
#[test]
fn lenet_matches_pytorch() {
    let sigmoid = |b: &mut GraphBuilder, name: &str, input: NodeId, shape: &[usize]| {
        b.node(name, Op::Activation(Activation::Sigmoid), &[input], shape)
    };
    let avg = Pool {
        kind: PoolKind::Avg,
        kernel: vec![2, 2],
        stride: vec![2, 2],
        padding: vec![0, 0],
    };
    let mut b = GraphBuilder::new(&[1, 28, 28]);
    let x = b.conv("conv1", NodeId(0), conv(1, 6, 5, 1, 2), &[6, 28, 28]);
    let x = sigmoid(&mut b, "sigmoid1", x, &[6, 28, 28]);
    let x = b.node("avgpool1", Op::Pool(avg.clone()), &[x], &[6, 14, 14]);
    let x = b.conv("conv2", x, conv(6, 16, 5, 1, 0), &[16, 10, 10]);
    let x = sigmoid(&mut b, "sigmoid2", x, &[16, 10, 10]);
    let x = b.node("avgpool2", Op::Pool(avg), &[x], &[16, 5, 5]);
    let x = b.node("flatten1", Op::Flatten, &[x], &[400]);
    let x = b.dense("dense1", x, 400, 120);
    let x = sigmoid(&mut b, "sigmoid3", x, &[120]);
    let x = b.dense("dense2", x, 120, 84);
    let x = sigmoid(&mut b, "sigmoid4", x, &[84]);
    b.dense("dense3", x, 84, 10);
    check(&b.graph, "lenet");
}
