//! The lowered kernels against the reference, forward and backward, on random shapes and
//! hyper-parameters (proptest), then whole plans against `reference::forward`/`backward`.
//!
//! Kernels run through the checking interpreter (`lower::interp::run_checking_parallel`), so
//! every random case also shows that no generated access leaves its buffer and that the
//! iterations of every parallel loop touch disjoint elements (bitwise identical results for
//! any thread count). Tolerance: `|a − b| ≤ 1e-4 +
//! 1e-4·|b|` per element for single ops (f32 with fused multiply-adds against the reference's
//! f64 sums of at most a few hundred terms of magnitude ≤ 3), `1e-4 + 1e-3·|b|` for whole
//! graphs, where batchnorm divides rounding errors by small standard deviations.

use cnnc::ir::{
    Activation, BatchNorm, Conv, Dense, Graph, Loss, Node, NodeId, Op, Param, ParamId, ParamKind,
    Pool, PoolKind, Shape,
};
use cnnc::lower::builder::Tensor;
use cnnc::lower::loops::{BufId, Kernel};
use cnnc::lower::{activation, conv, dense, dropout, interp, join, loss, norm, pool};
use cnnc::lower::{plan, BufferRole, Plan};
use cnnc::reference;
use cnnc::span::Span;
use ndarray::{ArrayD, IxDyn};
use proptest::prelude::*;

const OP_RTOL: f32 = 1e-4;
const GRAPH_RTOL: f32 = 1e-3;
const ATOL: f32 = 1e-4;

/// splitmix64: random tensors from one proptest-drawn seed, so failures shrink to a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[lo, hi)`.
    fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.next() >> 40) as f32 / (1u64 << 24) as f32)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn tensor(&mut self, shape: &[usize], lo: f32, hi: f32) -> ArrayD<f32> {
        ArrayD::from_shape_fn(IxDyn(shape), |_| self.uniform(lo, hi))
    }

    /// Values at least 0.01 apart (a shuffled ramp), so max pooling has no ties.
    fn distinct(&mut self, shape: &[usize]) -> ArrayD<f32> {
        let len: usize = shape.iter().product();
        let mut ramp: Vec<f32> = (0..len)
            .map(|i| i as f32 * 0.01 - len as f32 * 0.005)
            .collect();
        for i in (1..len).rev() {
            ramp.swap(i, self.below(i + 1));
        }
        ArrayD::from_shape_vec(IxDyn(shape), ramp).expect("shape matches length")
    }
}

/// Buffers for kernels run one at a time by the interpreter.
#[derive(Default)]
struct Machine {
    bufs: Vec<Vec<f32>>,
}

impl Machine {
    fn put(&mut self, a: &ArrayD<f32>) -> Tensor {
        self.bufs
            .push(a.as_standard_layout().iter().copied().collect());
        Tensor::new(BufId(self.bufs.len() as u32 - 1), a.shape().to_vec())
    }

    fn zeros(&mut self, dims: &[usize]) -> Tensor {
        self.put(&ArrayD::zeros(IxDyn(dims)))
    }

    fn run(&mut self, kernel: &Kernel) {
        interp::run_checking_parallel(kernel, &mut self.bufs).unwrap_or_else(|e| panic!("{e}"));
    }

    fn get(&self, t: &Tensor) -> ArrayD<f32> {
        ArrayD::from_shape_vec(IxDyn(&t.dims), self.bufs[t.buf.0 as usize].clone())
            .expect("buffer length matches its tensor")
    }
}

fn assert_close(actual: &ArrayD<f32>, expected: &ArrayD<f32>, rtol: f32, what: &str) {
    assert_eq!(actual.shape(), expected.shape(), "{what}: shape");
    for ((index, a), e) in actual.indexed_iter().zip(expected.iter()) {
        assert!(
            (a - e).abs() <= ATOL + rtol * e.abs(),
            "{what} at {index:?}: lowered {a}, reference {e}"
        );
    }
}

/// One spatial axis of a random convolution.
#[derive(Clone, Debug)]
struct ConvAxis {
    kernel: usize,
    stride: usize,
    dilation: usize,
    padding: (usize, usize),
    extra: usize,
}

impl ConvAxis {
    fn input_size(&self) -> usize {
        let span = self.dilation * (self.kernel - 1) + 1;
        span.saturating_sub(self.padding.0 + self.padding.1).max(1) + self.extra
    }

    fn output_size(&self) -> usize {
        let span = self.dilation * (self.kernel - 1) + 1;
        (self.input_size() + self.padding.0 + self.padding.1 - span) / self.stride + 1
    }
}

fn conv_axis() -> impl Strategy<Value = ConvAxis> {
    (
        1..=3usize,
        1..=2usize,
        1..=2usize,
        0..=2usize,
        0..=2usize,
        0..=3usize,
    )
        .prop_map(
            |(kernel, stride, dilation, before, after, extra)| ConvAxis {
                kernel,
                stride,
                dilation,
                padding: (before, after),
                extra,
            },
        )
}

/// One spatial axis of a random pooling (padding at most half the kernel, as PyTorch).
#[derive(Clone, Debug)]
struct PoolAxis {
    kernel: usize,
    stride: usize,
    padding: usize,
    input: usize,
}

impl PoolAxis {
    fn output_size(&self) -> usize {
        (self.input + 2 * self.padding - self.kernel) / self.stride + 1
    }
}

fn pool_axis() -> impl Strategy<Value = PoolAxis> {
    (1..=3usize, 1..=3usize, 0..=1usize, 0..=3usize).prop_map(|(kernel, stride, pad, extra)| {
        let padding = pad.min(kernel / 2);
        PoolAxis {
            kernel,
            stride,
            padding,
            input: kernel.saturating_sub(2 * padding).max(1) + extra,
        }
    })
}

fn activation_kind() -> impl Strategy<Value = Activation> {
    prop_oneof![
        Just(Activation::Relu),
        (0.0f32..0.5).prop_map(|slope| Activation::LeakyRelu { slope }),
        Just(Activation::Sigmoid),
        Just(Activation::Tanh),
        Just(Activation::Softmax),
    ]
}

/// `[N, C, *spatial]` with 0 to 2 spatial axes.
fn activation_shape() -> impl Strategy<Value = Vec<usize>> {
    (
        1..=3usize,
        1..=4usize,
        prop::collection::vec(1..=3usize, 0..=2),
    )
        .prop_map(|(n, c, spatial)| [vec![n, c], spatial].concat())
}

/// Shapes where every channel has at least two values (PyTorch refuses fewer in training).
fn two_values_per_channel() -> impl Strategy<Value = Vec<usize>> {
    activation_shape().prop_filter("two values per channel", |s| {
        s.iter().product::<usize>() / s[1] > 1
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn conv_matches_reference(
        batch in 1..=2usize,
        groups in 1..=2usize,
        in_per_group in 1..=2usize,
        out_per_group in 1..=2usize,
        axes in prop::collection::vec(conv_axis(), 1..=3),
        has_bias in any::<bool>(),
        seed in any::<u64>(),
    ) {
        check_conv(batch, groups, in_per_group, out_per_group, axes, has_bias, seed);
    }

    #[test]
    fn pool_matches_reference(
        batch in 1..=2usize,
        channels in 1..=3usize,
        max in any::<bool>(),
        axes in prop::collection::vec(pool_axis(), 1..=3),
        seed in any::<u64>(),
    ) {
        check_pool(batch, channels, max, axes, seed);
    }

    #[test]
    fn global_avgpool_matches_reference(shape in activation_shape(), seed in any::<u64>()) {
        check_global_avgpool(shape, seed);
    }

    #[test]
    fn dense_matches_reference(
        batch in 1..=3usize,
        in_features in 1..=12usize,
        units in 1..=5usize,
        has_bias in any::<bool>(),
        seed in any::<u64>(),
    ) {
        check_dense(batch, in_features, units, has_bias, seed);
    }

    #[test]
    fn activation_matches_reference(
        kind in activation_kind(),
        shape in activation_shape(),
        seed in any::<u64>(),
    ) {
        check_activation(kind, shape, seed);
    }

    #[test]
    fn batchnorm_matches_reference(
        shape in two_values_per_channel(),
        momentum in 0.0f32..1.0,
        seed in any::<u64>(),
    ) {
        check_batchnorm(shape, momentum, seed);
    }

    #[test]
    fn dropout_matches_reference(
        shape in activation_shape(),
        p in 0.0f32..0.9,
        seed in any::<u64>(),
    ) {
        check_dropout(shape, p, seed);
    }

    #[test]
    fn concat_and_add_match_reference(
        shape in activation_shape(),
        extra_channels in prop::collection::vec(1..=3usize, 1..=2),
        seed in any::<u64>(),
    ) {
        check_concat_and_add(shape, extra_channels, seed);
    }

    #[test]
    fn losses_match_reference(batch in 1..=4usize, classes in 1..=6usize, seed in any::<u64>()) {
        check_losses(batch, classes, seed);
    }
}

fn check_conv(
    batch: usize,
    groups: usize,
    in_per_group: usize,
    out_per_group: usize,
    axes: Vec<ConvAxis>,
    has_bias: bool,
    seed: u64,
) {
    let mut rng = Rng(seed);
    let ir = Conv {
        in_channels: groups * in_per_group,
        out_channels: groups * out_per_group,
        kernel: axes.iter().map(|a| a.kernel).collect(),
        stride: axes.iter().map(|a| a.stride).collect(),
        padding: axes.iter().map(|a| a.padding).collect(),
        dilation: axes.iter().map(|a| a.dilation).collect(),
        groups,
        weight: ParamId(0),
        bias: has_bias.then_some(ParamId(1)),
    };
    let x_shape = [
        vec![batch, ir.in_channels],
        axes.iter().map(ConvAxis::input_size).collect(),
    ]
    .concat();
    let y_shape = [
        vec![batch, ir.out_channels],
        axes.iter().map(ConvAxis::output_size).collect(),
    ]
    .concat();
    let w_shape = [vec![ir.out_channels, in_per_group], ir.kernel.clone()].concat();
    let (xa, wa, ba) = (
        rng.tensor(&x_shape, -1., 1.),
        rng.tensor(&w_shape, -1., 1.),
        rng.tensor(&[ir.out_channels], -1., 1.),
    );
    let gya = rng.tensor(&y_shape, -1., 1.);

    let mut m = Machine::default();
    let (x, w, b, y) = (m.put(&xa), m.put(&wa), m.put(&ba), m.zeros(&y_shape));
    let (dy, dx, dw, db) = (
        m.put(&gya),
        m.zeros(&x_shape),
        m.zeros(&w_shape),
        m.zeros(&[ir.out_channels]),
    );
    let t = conv::ConvTensors {
        x: &x,
        weight: &w,
        bias: has_bias.then_some(&b),
        y: &y,
    };
    m.run(&conv::forward("conv", &ir, &t));
    for k in conv::backward(
        "conv",
        &ir,
        &t,
        &dy,
        Some(&dx),
        &dw,
        has_bias.then_some(&db),
    ) {
        m.run(&k);
    }

    let expected = reference::conv::forward(&xa, &wa, has_bias.then_some(&ba), &ir);
    assert_close(&m.get(&y), &expected, OP_RTOL, "conv forward");
    let grads = reference::conv::backward(&xa, &wa, &ir, &gya);
    assert_close(&m.get(&dx), &grads.input, OP_RTOL, "conv input gradient");
    assert_close(&m.get(&dw), &grads.weight, OP_RTOL, "conv weight gradient");
    if let Some(gb) = grads.bias {
        assert_close(&m.get(&db), &gb, OP_RTOL, "conv bias gradient");
    }
}

fn check_pool(batch: usize, channels: usize, max: bool, axes: Vec<PoolAxis>, seed: u64) {
    let mut rng = Rng(seed);
    let ir = Pool {
        kind: if max { PoolKind::Max } else { PoolKind::Avg },
        kernel: axes.iter().map(|a| a.kernel).collect(),
        stride: axes.iter().map(|a| a.stride).collect(),
        padding: axes.iter().map(|a| a.padding).collect(),
    };
    let x_shape = [
        vec![batch, channels],
        axes.iter().map(|a| a.input).collect(),
    ]
    .concat();
    let y_shape = [
        vec![batch, channels],
        axes.iter().map(PoolAxis::output_size).collect(),
    ]
    .concat();
    let (xa, gya) = (rng.distinct(&x_shape), rng.tensor(&y_shape, -1., 1.));

    let mut m = Machine::default();
    let (x, y, dy, dx) = (
        m.put(&xa),
        m.zeros(&y_shape),
        m.put(&gya),
        m.zeros(&x_shape),
    );
    m.run(&pool::forward("pool", &ir, &x, &y));
    m.run(&pool::backward("pool", &ir, &x, &y, &dy, &dx));
    assert_close(
        &m.get(&y),
        &reference::pool::forward(&xa, &ir),
        OP_RTOL,
        "pool forward",
    );
    assert_close(
        &m.get(&dx),
        &reference::pool::backward(&xa, &ir, &gya),
        OP_RTOL,
        "pool backward",
    );
}

fn check_global_avgpool(shape: Vec<usize>, seed: u64) {
    let mut rng = Rng(seed);
    let (xa, gya) = (
        rng.tensor(&shape, -1., 1.),
        rng.tensor(&shape[..2], -1., 1.),
    );
    let mut m = Machine::default();
    let (x, y, dy, dx) = (
        m.put(&xa),
        m.zeros(&shape[..2]),
        m.put(&gya),
        m.zeros(&shape),
    );
    m.run(&pool::global_avg_forward("gap", &x, &y));
    m.run(&pool::global_avg_backward("gap", &dy, &dx));
    assert_close(
        &m.get(&y),
        &reference::pool::global_avg_forward(&xa),
        OP_RTOL,
        "global avgpool forward",
    );
    let expected = reference::pool::global_avg_backward(&shape, &gya);
    assert_close(&m.get(&dx), &expected, OP_RTOL, "global avgpool backward");
}

fn check_dense(batch: usize, in_features: usize, units: usize, has_bias: bool, seed: u64) {
    let mut rng = Rng(seed);
    let ir = Dense {
        in_features,
        units,
        weight: ParamId(0),
        bias: has_bias.then_some(ParamId(1)),
    };
    let xa = rng.tensor(&[batch, in_features], -1., 1.);
    let (wa, ba) = (
        rng.tensor(&[units, in_features], -1., 1.),
        rng.tensor(&[units], -1., 1.),
    );
    let gya = rng.tensor(&[batch, units], -1., 1.);
    let mut m = Machine::default();
    let (x, w, b, y) = (m.put(&xa), m.put(&wa), m.put(&ba), m.zeros(&[batch, units]));
    let (dy, dx, dw, db) = (
        m.put(&gya),
        m.zeros(&[batch, in_features]),
        m.zeros(&[units, in_features]),
        m.zeros(&[units]),
    );
    let t = dense::DenseTensors {
        x: &x,
        weight: &w,
        bias: has_bias.then_some(&b),
        y: &y,
    };
    m.run(&dense::forward("dense", &ir, &t));
    for k in dense::backward(
        "dense",
        &ir,
        &t,
        &dy,
        Some(&dx),
        &dw,
        has_bias.then_some(&db),
    ) {
        m.run(&k);
    }
    let expected = reference::dense::forward(&xa, &wa, has_bias.then_some(&ba), &ir);
    assert_close(&m.get(&y), &expected, OP_RTOL, "dense forward");
    let grads = reference::dense::backward(&xa, &wa, &ir, &gya);
    assert_close(&m.get(&dx), &grads.input, OP_RTOL, "dense input gradient");
    assert_close(&m.get(&dw), &grads.weight, OP_RTOL, "dense weight gradient");
    if let Some(gb) = grads.bias {
        assert_close(&m.get(&db), &gb, OP_RTOL, "dense bias gradient");
    }
}

fn check_activation(kind: Activation, shape: Vec<usize>, seed: u64) {
    let mut rng = Rng(seed);
    let (xa, gya) = (rng.tensor(&shape, -3., 3.), rng.tensor(&shape, -1., 1.));
    let mut m = Machine::default();
    let (x, y, dy, dx) = (m.put(&xa), m.zeros(&shape), m.put(&gya), m.zeros(&shape));
    m.run(&activation::forward("act", kind, &x, &y));
    m.run(&activation::backward("act", kind, &x, &y, &dy, &dx));
    let ya = reference::activation::forward(&xa, kind);
    assert_close(&m.get(&y), &ya, OP_RTOL, "activation forward");
    let expected = reference::activation::backward(&xa, &ya, kind, &gya);
    assert_close(&m.get(&dx), &expected, OP_RTOL, "activation backward");
}

fn check_batchnorm(shape: Vec<usize>, momentum: f32, seed: u64) {
    let mut rng = Rng(seed);
    let channels = shape[1];
    let ir = BatchNorm {
        channels,
        eps: 1e-5,
        momentum,
        weight: ParamId(0),
        bias: ParamId(1),
        running_mean: ParamId(2),
        running_var: ParamId(3),
    };
    let xa = rng.tensor(&shape, -2., 2.);
    let params = [
        rng.tensor(&[channels], 0.5, 1.5),
        rng.tensor(&[channels], -1., 1.),
        rng.tensor(&[channels], -1., 1.),
        rng.tensor(&[channels], 0.5, 2.),
    ];
    let gya = rng.tensor(&shape, -1., 1.);
    let mut m = Machine::default();
    let (x, y) = (m.put(&xa), m.zeros(&shape));
    let [w, b, rm, rv] = params.clone().map(|p| m.put(&p));
    let (sm, si) = (m.zeros(&[channels]), m.zeros(&[channels]));
    let (dy, dx, dw, db) = (
        m.put(&gya),
        m.zeros(&shape),
        m.zeros(&[channels]),
        m.zeros(&[channels]),
    );
    let t = norm::NormTensors {
        x: &x,
        y: &y,
        weight: &w,
        bias: &b,
        running_mean: &rm,
        running_var: &rv,
        saved_mean: &sm,
        saved_invstd: &si,
    };

    let infer_expected =
        reference::norm::forward_infer(&xa, &params[0], &params[1], &params[2], &params[3], &ir);
    m.run(&norm::forward_infer("bn", &ir, &t));
    assert_close(
        &m.get(&y),
        &infer_expected,
        GRAPH_RTOL,
        "batchnorm inference",
    );

    let [mut mean, mut var] = [params[2].clone(), params[3].clone()];
    let expected =
        reference::norm::forward_train(&xa, &params[0], &params[1], &mut mean, &mut var, &ir);
    m.run(&norm::forward_train("bn", &ir, &t));
    assert_close(
        &m.get(&y),
        &expected,
        GRAPH_RTOL,
        "batchnorm training forward",
    );
    assert_close(&m.get(&rm), &mean, OP_RTOL, "running mean");
    assert_close(&m.get(&rv), &var, OP_RTOL, "running variance");

    m.run(&norm::backward("bn", &t, &dy, Some(&dx), &dw, &db));
    let grads = reference::norm::backward_train(&xa, &params[0], &ir, &gya);
    assert_close(
        &m.get(&dx),
        &grads.input,
        GRAPH_RTOL,
        "batchnorm input gradient",
    );
    assert_close(
        &m.get(&dw),
        &grads.weight,
        OP_RTOL,
        "batchnorm weight gradient",
    );
    assert_close(&m.get(&db), &grads.bias, OP_RTOL, "batchnorm bias gradient");
}

fn check_dropout(shape: Vec<usize>, p: f32, seed: u64) {
    let mut rng = Rng(seed);
    let xa = rng.tensor(&shape, -1., 1.);
    let maska = ArrayD::from_shape_fn(IxDyn(&shape), |_| {
        if rng.uniform(0., 1.) < p {
            0.
        } else {
            1. / (1. - p)
        }
    });
    let gya = rng.tensor(&shape, -1., 1.);
    let mut m = Machine::default();
    let (x, mask, y, dy, dx) = (
        m.put(&xa),
        m.put(&maska),
        m.zeros(&shape),
        m.put(&gya),
        m.zeros(&shape),
    );
    m.run(&dropout::forward_train("drop", &x, &mask, &y));
    m.run(&dropout::backward("drop", &mask, &dy, &dx));
    assert_close(
        &m.get(&y),
        &reference::dropout::forward(&xa, &maska),
        OP_RTOL,
        "dropout forward",
    );
    assert_close(
        &m.get(&dx),
        &reference::dropout::backward(&maska, &gya),
        OP_RTOL,
        "dropout backward",
    );
    m.run(&dropout::forward_infer("drop", &x, &y));
    assert_close(&m.get(&y), &xa, 0.0, "dropout inference");
}

fn check_concat_and_add(shape: Vec<usize>, extra_channels: Vec<usize>, seed: u64) {
    let mut rng = Rng(seed);
    let shapes: Vec<Vec<usize>> = std::iter::once(shape[1])
        .chain(extra_channels)
        .map(|c| [vec![shape[0], c], shape[2..].to_vec()].concat())
        .collect();
    let xas: Vec<ArrayD<f32>> = shapes.iter().map(|s| rng.tensor(s, -1., 1.)).collect();
    let refs: Vec<&ArrayD<f32>> = xas.iter().collect();
    let cat_expected = reference::join::concat_forward(&refs);
    let gya = rng.tensor(cat_expected.shape(), -1., 1.);
    let mut m = Machine::default();
    let xs: Vec<Tensor> = xas.iter().map(|a| m.put(a)).collect();
    let dxs: Vec<Tensor> = shapes.iter().map(|s| m.zeros(s)).collect();
    let (y, dy) = (m.zeros(cat_expected.shape()), m.put(&gya));
    let x_refs: Vec<&Tensor> = xs.iter().collect();
    m.run(&join::concat_forward("cat", &x_refs, &y));
    m.run(&join::concat_backward(
        "cat",
        &x_refs,
        &dy,
        &dxs.iter().map(Some).collect::<Vec<_>>(),
    ));
    assert_close(&m.get(&y), &cat_expected, 0.0, "concat forward");
    let channels: Vec<usize> = shapes.iter().map(|s| s[1]).collect();
    for (dx, expected) in dxs
        .iter()
        .zip(reference::join::concat_backward(&channels, &gya))
    {
        assert_close(&m.get(dx), &expected, 0.0, "concat backward");
    }

    // Add the first input to itself and to a second tensor of its shape.
    let other = rng.tensor(&shapes[0], -1., 1.);
    let (o, sum, dsum, dfirst) = (
        m.put(&other),
        m.zeros(&shapes[0]),
        m.put(&xas[0]),
        m.zeros(&shapes[0]),
    );
    m.run(&join::add_forward("add", &[&xs[0], &o, &xs[0]], &sum));
    m.run(&join::add_backward(
        "add",
        &dsum,
        &[Some(&dfirst), None, Some(&dfirst)],
    ));
    let expected = reference::join::add_forward(&[&xas[0], &other, &xas[0]]);
    assert_close(&m.get(&sum), &expected, OP_RTOL, "add forward");
    assert_close(&m.get(&dfirst), &(&xas[0] * 2.0), OP_RTOL, "add backward");
}

fn check_losses(batch: usize, classes: usize, seed: u64) {
    let mut rng = Rng(seed);
    let ya = rng.tensor(&[batch, classes], -5., 5.);
    let labels: Vec<usize> = (0..batch).map(|_| rng.below(classes)).collect();
    let label_values =
        ArrayD::from_shape_vec(IxDyn(&[batch]), labels.iter().map(|&l| l as f32).collect())
            .expect("one label per sample");
    let target = rng.tensor(&[batch, classes], -1., 1.);
    for (kind, truth) in [(Loss::CrossEntropy, &label_values), (Loss::Mse, &target)] {
        let mut m = Machine::default();
        let (y, t, per_sample, dy) = (
            m.put(&ya),
            m.put(truth),
            m.zeros(&[batch]),
            m.zeros(&[batch, classes]),
        );
        m.run(&loss::forward_backward(
            kind,
            &loss::LossTensors {
                output: &y,
                truth: &t,
                loss: &per_sample,
                dy: Some(&dy),
            },
        ));
        let (expected, grad) = match kind {
            Loss::CrossEntropy => reference::loss::cross_entropy(&ya, &labels),
            Loss::Mse => reference::loss::mse(&ya, &target),
        };
        let mean = m.get(&per_sample).mean().expect("batch is not empty");
        assert!(
            (mean - expected).abs() <= ATOL + OP_RTOL * expected.abs(),
            "{kind:?}: {mean} vs {expected}"
        );
        assert_close(&m.get(&dy), &grad, OP_RTOL, "loss gradient");
    }
}

/// Builds graphs by hand (the test states every shape; the reference checks them).
struct GraphBuilder {
    graph: Graph,
}

impl GraphBuilder {
    fn new(input: &[usize]) -> GraphBuilder {
        let mut b = GraphBuilder {
            graph: Graph {
                name: "test".into(),
                nodes: Vec::new(),
                params: Vec::new(),
                output: NodeId(0),
                train: None,
                span: Span::default(),
            },
        };
        b.node("input", Op::Input, &[], input);
        b
    }

    fn node(&mut self, name: &str, op: Op, inputs: &[NodeId], shape: &[usize]) -> NodeId {
        self.graph.nodes.push(Node {
            op,
            inputs: inputs.to_vec(),
            shape: Shape(shape.to_vec()),
            span: Span::default(),
            name: name.into(),
        });
        self.graph.output = NodeId(self.graph.nodes.len() as u32 - 1);
        self.graph.output
    }

    fn param(&mut self, node: &str, kind: ParamKind, shape: &[usize]) -> ParamId {
        self.graph.params.push(Param {
            name: format!("{node}.{}", kind.suffix()),
            shape: shape.to_vec(),
            kind,
            node: NodeId(self.graph.nodes.len() as u32),
        });
        ParamId(self.graph.params.len() as u32 - 1)
    }

    /// A 2-D convolution with bias, `kernel`×`kernel`, symmetric `padding`, stride 1.
    #[allow(clippy::too_many_arguments)]
    fn conv(
        &mut self,
        name: &str,
        input: NodeId,
        channels: (usize, usize),
        kernel: usize,
        padding: usize,
        groups: usize,
        shape: &[usize],
    ) -> NodeId {
        let (cin, cout) = channels;
        let weight = self.param(
            name,
            ParamKind::Weight,
            &[cout, cin / groups, kernel, kernel],
        );
        let bias = Some(self.param(name, ParamKind::Bias, &[cout]));
        let conv = Conv {
            in_channels: cin,
            out_channels: cout,
            kernel: vec![kernel; 2],
            stride: vec![1; 2],
            padding: vec![(padding, padding); 2],
            dilation: vec![1; 2],
            groups,
            weight,
            bias,
        };
        self.node(name, Op::Conv(conv), &[input], shape)
    }

    fn batchnorm(&mut self, name: &str, input: NodeId, shape: &[usize]) -> NodeId {
        let c = [shape[0]];
        let bn = BatchNorm {
            channels: shape[0],
            eps: 1e-5,
            momentum: 0.1,
            weight: self.param(name, ParamKind::Weight, &c),
            bias: self.param(name, ParamKind::Bias, &c),
            running_mean: self.param(name, ParamKind::RunningMean, &c),
            running_var: self.param(name, ParamKind::RunningVar, &c),
        };
        self.node(name, Op::BatchNorm(bn), &[input], shape)
    }

    fn dense(&mut self, name: &str, input: NodeId, in_features: usize, units: usize) -> NodeId {
        let dense = Dense {
            in_features,
            units,
            weight: self.param(name, ParamKind::Weight, &[units, in_features]),
            bias: Some(self.param(name, ParamKind::Bias, &[units])),
        };
        self.node(name, Op::Dense(dense), &[input], &[units])
    }
}

/// input [2, 4, 4] → conv → batchnorm → tanh, concatenated with a max pool of the input; that
/// concat is added to a grouped 1×1 conv of itself (one value, two consumers, one through an
/// identity), average pooling, dropout, flatten, dense 3.
fn branching_graph() -> Graph {
    let mut b = GraphBuilder::new(&[2, 4, 4]);
    let c1 = b.conv("conv1", NodeId(0), (2, 3), 3, 1, 1, &[3, 4, 4]);
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
    let c2 = b.conv("conv2", cat, (5, 5), 1, 0, 5, &[5, 4, 4]);
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

/// The buffers of a plan, filled with the given parameters, input, masks and truth.
struct PlanRun<'a> {
    plan: &'a Plan,
    bufs: Vec<Vec<f32>>,
}

impl<'a> PlanRun<'a> {
    fn new(plan: &'a Plan) -> PlanRun<'a> {
        let bufs = plan.buffers.iter().map(|b| vec![0.0; b.len]).collect();
        PlanRun { plan, bufs }
    }

    fn set(&mut self, role: BufferRole, a: &ArrayD<f32>) {
        let buf = self
            .plan
            .buffer(role)
            .unwrap_or_else(|| panic!("no buffer for {role:?}"));
        let data: Vec<f32> = a.as_standard_layout().iter().copied().collect();
        assert_eq!(
            data.len(),
            self.bufs[buf.0 as usize].len(),
            "{role:?}: length"
        );
        self.bufs[buf.0 as usize] = data;
    }

    fn get(&self, role: BufferRole, shape: &[usize]) -> ArrayD<f32> {
        let buf = self
            .plan
            .buffer(role)
            .unwrap_or_else(|| panic!("no buffer for {role:?}"));
        ArrayD::from_shape_vec(IxDyn(shape), self.bufs[buf.0 as usize].clone()).expect("length")
    }

    fn run(&mut self, schedule: &[usize]) {
        for &k in schedule {
            interp::run_checking_parallel(&self.plan.kernels[k], &mut self.bufs)
                .unwrap_or_else(|e| panic!("{e}"));
        }
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

/// Inference, then a training step (forward, loss, backward) of `graph`'s plan, checked
/// against the reference: outputs, the mean loss, every parameter gradient and the updated
/// running statistics.
fn check_plan(graph: &Graph, batch: usize, kind: Loss, seed: u64) {
    let mut rng = Rng(seed);
    let plan = plan(graph, batch, kind);
    let params = init(graph, &mut rng);
    let x = rng.distinct(&[vec![batch], graph.input().shape.0.clone()].concat());
    let output_shape = [vec![batch], graph.output_shape().0.clone()].concat();
    let masks: Vec<Option<ArrayD<f32>>> = graph
        .nodes
        .iter()
        .map(|node| match node.op {
            Op::Dropout { p } => {
                let shape = [vec![batch], node.shape.0.clone()].concat();
                Some(ArrayD::from_shape_fn(IxDyn(&shape), |_| {
                    if rng.uniform(0., 1.) < p {
                        0.
                    } else {
                        1. / (1. - p)
                    }
                }))
            }
            _ => None,
        })
        .collect();
    let labels: Vec<usize> = (0..batch).map(|_| rng.below(output_shape[1])).collect();
    let target = rng.tensor(&output_shape, 0., 1.);

    let mut run = PlanRun::new(&plan);
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
            run.set(
                BufferRole::Labels,
                &ArrayD::from_shape_vec(IxDyn(&[batch]), values).expect("labels"),
            );
        }
        Loss::Mse => run.set(BufferRole::Target, &target),
    }

    let mut inferred_params = params.clone();
    let expected = reference::forward(
        graph,
        &mut inferred_params,
        &x,
        reference::Mode::Infer,
        &masks,
    );
    run.run(&plan.infer);
    let output = BufferRole::Value(graph.output);
    assert_close(
        &run.get(output, &output_shape),
        &expected[graph.output.0 as usize],
        GRAPH_RTOL,
        "inference output",
    );

    let mut trained_params = params.clone();
    let values = reference::forward(
        graph,
        &mut trained_params,
        &x,
        reference::Mode::Train,
        &masks,
    );
    let y = &values[graph.output.0 as usize];
    let (expected_loss, grad_output) = match kind {
        Loss::CrossEntropy => reference::loss::cross_entropy(y, &labels),
        Loss::Mse => reference::loss::mse(y, &target),
    };
    let grads = reference::backward(graph, &params, &values, &masks, grad_output);
    run.run(&plan.train_forward);
    run.run(&[plan.loss]);
    run.run(&plan.backward);
    assert_close(
        &run.get(output, &output_shape),
        y,
        GRAPH_RTOL,
        "training output",
    );
    let mean_loss = run
        .get(BufferRole::Loss, &[batch])
        .mean()
        .expect("batch is not empty");
    assert!(
        (mean_loss - expected_loss).abs() <= ATOL + GRAPH_RTOL * expected_loss.abs(),
        "loss {mean_loss} vs {expected_loss}"
    );
    for (i, declared) in graph.params.iter().enumerate() {
        let id = ParamId(i as u32);
        match &grads.params[i] {
            Some(expected) => {
                let actual = run.get(BufferRole::ParamGrad(id), &declared.shape);
                assert_close(
                    &actual,
                    expected,
                    GRAPH_RTOL,
                    &format!("{} gradient", declared.name),
                );
            }
            None => {
                let actual = run.get(BufferRole::Param(id), &declared.shape);
                assert_close(&actual, &trained_params[i], GRAPH_RTOL, &declared.name);
            }
        }
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
