//! Every op's lowered kernels against the reference, forward and backward, on random shapes
//! and hyper-parameters (proptest). Whole plans are checked in `tests/plan.rs`.
//!
//! Each kernel runs twice (`support::Twin`): through the JIT on 2 threads, and through the
//! checking interpreter, so every random case also shows that no access leaves its buffer and
//! that the iterations of every parallel loop touch disjoint elements (bitwise identical
//! results for any thread count). Tolerance: `|a − b| ≤ 1e-4 + 1e-4·|b|` per element (f32 with
//! fused multiply-adds and the JIT's polynomial `exp` against the reference's f64 sums of at
//! most a few hundred terms of magnitude ≤ 3), `1e-4 + 1e-3·|b|` for batchnorm, which divides
//! rounding errors by small standard deviations.

use cnnc::ir::{Activation, BatchNorm, Conv, Dense, Loss, ParamId, Pool, PoolKind};
use cnnc::lower::builder::{Scratch, Tensor};
use cnnc::lower::loops::Kernel;
use cnnc::lower::{activation, conv, dense, dropout, join, loss, norm, pool};
use cnnc::reference;
use ndarray::{ArrayD, IxDyn};
use proptest::prelude::*;

mod support;

use support::{assert_close, Rng, Twin, GRAPH_RTOL};

/// Relative tolerance of single ops.
const OP_RTOL: f32 = 1e-4;

/// Tensors over a [`Twin`] buffer table, for kernels run one at a time.
struct Machine(Twin);

impl Default for Machine {
    fn default() -> Self {
        Machine(Twin::new(&[], 2))
    }
}

impl Machine {
    fn put(&mut self, a: &ArrayD<f32>) -> Tensor {
        let buf = self
            .0
            .push(a.as_standard_layout().iter().copied().collect());
        Tensor::new(buf, a.shape().to_vec())
    }

    fn zeros(&mut self, dims: &[usize]) -> Tensor {
        self.put(&ArrayD::zeros(IxDyn(dims)))
    }

    fn run(&mut self, kernel: &Kernel) {
        self.0.run(&[kernel]);
    }

    fn check(&self, t: &Tensor, expected: &ArrayD<f32>, rtol: f32, what: &str) {
        self.0.check(t.buf, expected, rtol, what);
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

/// The activations a contraction may apply in its epilogue (softmax is never fused).
fn fusable_activation() -> impl Strategy<Value = Activation> {
    prop_oneof![
        Just(Activation::Relu),
        (0.0f32..0.5).prop_map(|slope| Activation::LeakyRelu { slope }),
        Just(Activation::Sigmoid),
        Just(Activation::Tanh),
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
    #![proptest_config(ProptestConfig::with_cases(16))]

    /// Channel counts on both sides of the lowering's choice of lanes (8 channels per group):
    /// lanes over output or input channels, or over the last spatial axis.
    #[test]
    fn wide_conv_matches_reference(
        groups in 1..=2usize,
        in_per_group in prop_oneof![1..=2usize, 8..=9usize],
        out_per_group in prop_oneof![1..=2usize, 8..=9usize],
        axes in prop::collection::vec(conv_axis(), 1..=2),
        has_bias in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let case = ConvCase { batch: 1, groups, in_per_group, out_per_group, axes, has_bias };
        check_conv(&case, None, seed);
    }

    /// A fused activation in the forward's epilogue and in the gradient's copies of `dy`.
    #[test]
    fn fused_conv_matches_reference(
        groups in 1..=2usize,
        in_per_group in 1..=2usize,
        out_per_group in prop_oneof![1..=2usize, 8..=8usize],
        axes in prop::collection::vec(conv_axis(), 1..=2),
        has_bias in any::<bool>(),
        epilogue in fusable_activation(),
        seed in any::<u64>(),
    ) {
        let case = ConvCase { batch: 2, groups, in_per_group, out_per_group, axes, has_bias };
        check_conv(&case, Some(epilogue), seed);
    }
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
        let case = ConvCase { batch, groups, in_per_group, out_per_group, axes, has_bias };
        check_conv(&case, None, seed);
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

    /// Batches and units on both sides of the kernels' row chunks (8), fused activation or not.
    #[test]
    fn dense_matches_reference(
        batch in 1..=19usize,
        in_features in 1..=12usize,
        units in 1..=19usize,
        has_bias in any::<bool>(),
        epilogue in prop::option::of(fusable_activation()),
        seed in any::<u64>(),
    ) {
        check_dense(batch, in_features, units, has_bias, epilogue, seed);
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

/// Strided convolutions with enough input channels for their input gradient to be the
/// correlation of the spread, padded `dy` (ResNet's downsampling 3×3 and 1×1 convolutions,
/// stride 2; a stride of 3 with dilation; padding on one side only, or beyond the kernel), with
/// and without a fused activation.
#[test]
fn strided_wide_conv_input_gradients_match_reference() {
    let axis = |kernel, stride, dilation, padding, extra| ConvAxis {
        kernel,
        stride,
        dilation,
        padding,
        extra,
    };
    let cases = [
        vec![axis(3, 2, 1, (1, 1), 5), axis(3, 2, 1, (1, 1), 4)],
        vec![axis(1, 2, 1, (0, 0), 6), axis(1, 2, 1, (0, 0), 7)],
        vec![axis(3, 3, 2, (2, 0), 4)],
        // Padding beyond the kernel's reach: some of `dy` spreads outside the padded layout.
        vec![axis(1, 2, 1, (2, 1), 5), axis(2, 2, 1, (2, 2), 3)],
    ];
    for (seed, axes) in cases.into_iter().enumerate() {
        let case = ConvCase {
            batch: 2,
            groups: 1,
            in_per_group: 8,
            out_per_group: 3,
            axes,
            has_bias: true,
        };
        check_conv(&case, None, seed as u64);
        check_conv(&case, Some(Activation::Relu), seed as u64 + 10);
    }
}

/// A weight gradient whose `dy` is too big for one tile of its reduction (over 256 KiB: 8
/// channels × 2 images × 72×72 positions), so it is summed image by image through `dw`.
#[test]
fn a_weight_gradient_summed_in_tiles_matches_reference() {
    let case = square_conv(2, 3, 8, 3, (1, 1), 69);
    check_conv(&case, Some(Activation::Relu), 7);
}

/// A weight gradient whose tile ends inside its batch loop: 64 channels × 10×10 positions are
/// 25.6 KB of `dy` an image and 100 reduction steps, fewer than the 256 a tile wants, and 12
/// images would overflow 256 KiB, so the batch loop is split in 2 × 6.
#[test]
fn a_weight_gradient_with_its_batch_loop_split_into_tiles_matches_reference() {
    let case = square_conv(12, 3, 64, 5, (0, 0), 9);
    let text = weight_gradient_text(&check_conv(&case, Some(Activation::Sigmoid), 11));
    assert!(
        text.contains(" in 0..2\n") && text.contains(" in 0..6\n"),
        "the batch loop split in 2 × 6:\n{text}"
    );
}

/// LeNet's conv1 (6 output channels, 5×5, padded by 2) and a 2-channel one: weight gradients
/// with lanes over the output's width. With the threads' slices over the output channels
/// (conv1) the bias gradient's sums are taken per image inside them, beside the weight's; with
/// slices over the window rows (2 channels < 5 rows) in a pass of their own.
#[test]
fn weight_gradients_with_lanes_over_positions_take_the_bias_in_either_place() {
    for (out_channels, parallel_loops) in [(6, 1), (2, 2)] {
        let case = square_conv(3, 1, out_channels, 5, (2, 2), 3);
        let text = weight_gradient_text(&check_conv(&case, Some(Activation::Sigmoid), 5));
        assert_eq!(
            text.matches("parallel for").count(),
            parallel_loops,
            "{out_channels} channels:\n{text}"
        );
    }
}

/// The loops of the weight gradient kernel among `kernels`, buffers named by number.
fn weight_gradient_text(kernels: &[Kernel]) -> String {
    let weight = kernels
        .iter()
        .find(|k| k.name == "conv.backward_weight")
        .expect("a weight gradient kernel");
    cnnc::lower::print::kernel_text(weight, &|b| format!("b{}", b.0))
}

/// A 2-D convolution with a bias, one group, unit strides and dilations, and the same
/// `kernel`, `padding` and input (`extra` past the kernel's span) on both axes.
fn square_conv(
    batch: usize,
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    padding: (usize, usize),
    extra: usize,
) -> ConvCase {
    let axis = ConvAxis {
        kernel,
        stride: 1,
        dilation: 1,
        padding,
        extra,
    };
    ConvCase {
        batch,
        groups: 1,
        in_per_group: in_channels,
        out_per_group: out_channels,
        axes: vec![axis.clone(), axis],
        has_bias: true,
    }
}

/// The layer of a random convolution test.
struct ConvCase {
    batch: usize,
    groups: usize,
    in_per_group: usize,
    out_per_group: usize,
    axes: Vec<ConvAxis>,
    has_bias: bool,
}

/// The reference's forward and its activation, and the reference's gradients of the product
/// for the gradient before the activation. Returns the kernels it ran.
fn check_conv(case: &ConvCase, epilogue: Option<Activation>, seed: u64) -> Vec<Kernel> {
    let ConvCase {
        batch,
        groups,
        in_per_group,
        out_per_group,
        ref axes,
        has_bias,
    } = *case;
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
    let specs = conv::scratch(&ir, &x, &y, true, true);
    let scratch = Scratch::new(specs.iter().map(|s| (s.name, m.zeros(&s.dims))).collect());
    let t = conv::ConvTensors {
        x: &x,
        weight: &w,
        bias: has_bias.then_some(&b),
        y: &y,
        scratch: &scratch,
    };
    let kernels = [
        conv::forward("conv", &ir, &t, epilogue),
        conv::backward(
            "conv",
            &ir,
            &t,
            &dy,
            Some(&dx),
            &dw,
            has_bias.then_some(&db),
            epilogue,
        ),
    ];
    for k in kernels.iter().flatten() {
        m.run(k);
    }

    let product = reference::conv::forward(&xa, &wa, has_bias.then_some(&ba), &ir);
    let (expected, gza) = activated(&product, epilogue, &gya);
    m.check(&y, &expected, OP_RTOL, "conv forward");
    let grads = reference::conv::backward(&xa, &wa, &ir, &gza);
    m.check(&dx, &grads.input, OP_RTOL, "conv input gradient");
    m.check(&dw, &grads.weight, OP_RTOL, "conv weight gradient");
    if let Some(gb) = grads.bias {
        m.check(&db, &gb, OP_RTOL, "conv bias gradient");
    }
    kernels.into_iter().flatten().collect()
}

fn check_pool(batch: usize, channels: usize, max: bool, axes: Vec<PoolAxis>, seed: u64) {
    check_pool_on(batch, channels, max, axes, seed, false);
}

/// `axis(kernel, stride, padding, input)`.
fn axis(kernel: usize, stride: usize, padding: usize, input: usize) -> PoolAxis {
    PoolAxis {
        kernel,
        stride,
        padding,
        input,
    }
}

/// Poolings wide enough that the JIT vectorises along the last output axis (unrolled windows:
/// no padding; `lower::pool`), next to their padded and overlapping neighbours, which keep
/// the looped form or scalar stores. Each against the reference, with distinct inputs and with
/// ties (the gradient goes to the first maximum), and the JIT bitwise equal to the interpreter.
#[test]
fn wide_poolings_match_the_reference_and_the_interpreter_bitwise() {
    let cases: Vec<Vec<PoolAxis>> = vec![
        // 1-D: non-overlapping with a leftover element, overlapping, padded, stride > kernel.
        vec![axis(2, 2, 0, 19)],
        vec![axis(3, 1, 0, 17)],
        vec![axis(3, 2, 1, 16)],
        vec![axis(2, 3, 0, 20)],
        // 2-D: LeNet's 2×2/2, odd sizes, overlapping 3×3/2, padded, non-square.
        vec![axis(2, 2, 0, 12), axis(2, 2, 0, 17)],
        vec![axis(3, 2, 0, 11), axis(3, 2, 0, 13)],
        vec![axis(2, 2, 1, 9), axis(2, 2, 1, 10)],
        vec![axis(3, 3, 0, 9), axis(1, 1, 0, 14)],
        vec![axis(2, 1, 0, 6), axis(3, 3, 0, 16)],
        // 3-D: cubes and mixed windows, one padded.
        vec![axis(2, 2, 0, 4), axis(2, 2, 0, 6), axis(2, 2, 0, 10)],
        vec![axis(1, 1, 0, 3), axis(2, 2, 0, 5), axis(3, 3, 0, 13)],
        vec![axis(3, 2, 1, 5), axis(3, 2, 1, 6), axis(3, 2, 1, 9)],
    ];
    for (case, axes) in cases.into_iter().enumerate() {
        for max in [false, true] {
            for ties in [false, true] {
                check_pool_on(2, 3, max, axes.clone(), case as u64, ties);
            }
        }
    }
}

/// Runs one pooling's forward and backward; `ties`: inputs from a few values (many equal
/// maxima), and the JIT bitwise equal to the interpreter.
fn check_pool_on(
    batch: usize,
    channels: usize,
    max: bool,
    axes: Vec<PoolAxis>,
    seed: u64,
    ties: bool,
) {
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
    let xa = if ties {
        // `+ 0.0` turns −0 into +0: the interpreter's `f32::max` and the JIT's `fmax` may
        // pick different zeros of `max(−0, +0)`, a difference the bitwise check is not about.
        rng.tensor(&x_shape, -2., 2.).mapv(|v| v.round() + 0.0)
    } else {
        rng.distinct(&x_shape)
    };
    let gya = rng.tensor(&y_shape, -1., 1.);

    let mut m = Machine::default();
    let (x, y, dy, dx) = (
        m.put(&xa),
        m.zeros(&y_shape),
        m.put(&gya),
        m.zeros(&x_shape),
    );
    m.run(&pool::forward("pool", &ir, &x, &y));
    m.run(&pool::backward("pool", &ir, &x, &y, &dy, &dx));
    m.check(
        &y,
        &reference::pool::forward(&xa, &ir),
        OP_RTOL,
        "pool forward",
    );
    m.check(
        &dx,
        &reference::pool::backward(&xa, &ir, &gya),
        OP_RTOL,
        "pool backward",
    );
    if ties {
        for (t, what) in [(&y, "forward"), (&dx, "backward")] {
            let [interpreted, jitted] = m.0.get(t.buf, &t.dims);
            let bits = |a: &ArrayD<f32>| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&jitted), bits(&interpreted), "{what} of {ir:?}");
        }
    }
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
    m.check(
        &y,
        &reference::pool::global_avg_forward(&xa),
        OP_RTOL,
        "global avgpool forward",
    );
    let expected = reference::pool::global_avg_backward(&shape, &gya);
    m.check(&dx, &expected, OP_RTOL, "global avgpool backward");
}

/// The reference output `act(product)` and the gradient of `product` for `gy`, the gradient
/// of that output (`product` and `gy` themselves without an activation).
fn activated(
    product: &ArrayD<f32>,
    epilogue: Option<Activation>,
    gy: &ArrayD<f32>,
) -> (ArrayD<f32>, ArrayD<f32>) {
    match epilogue {
        None => (product.clone(), gy.clone()),
        Some(act) => {
            let y = reference::activation::forward(product, act);
            let gz = reference::activation::backward(product, &y, act, gy);
            (y, gz)
        }
    }
}

/// A weight over 8 MiB (2048 × 1088): the forward (its sigmoid applied in a last pass) and the
/// input gradient run cache-blocked, in tiles of the reduction (512 and 272 steps) summed on
/// through the output (`dense::Product::tiled`).
#[test]
fn dense_layer_with_a_big_weight_matches_reference() {
    check_dense(2, 2048, 1088, true, Some(Activation::Sigmoid), 1);
}

fn check_dense(
    batch: usize,
    in_features: usize,
    units: usize,
    has_bias: bool,
    epilogue: Option<Activation>,
    seed: u64,
) {
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
    let specs = dense::scratch(&ir, &x, true, epilogue);
    let scratch = Scratch::new(specs.iter().map(|s| (s.name, m.zeros(&s.dims))).collect());
    let t = dense::DenseTensors {
        x: &x,
        weight: &w,
        bias: has_bias.then_some(&b),
        y: &y,
        scratch: &scratch,
    };
    let kernels = [
        dense::forward("dense", &ir, &t, epilogue),
        dense::backward(
            "dense",
            &ir,
            &t,
            &dy,
            Some(&dx),
            &dw,
            has_bias.then_some(&db),
            epilogue,
        ),
    ];
    for k in kernels.iter().flatten() {
        m.run(k);
    }
    let product = reference::dense::forward(&xa, &wa, has_bias.then_some(&ba), &ir);
    let (expected, gza) = activated(&product, epilogue, &gya);
    m.check(&y, &expected, OP_RTOL, "dense forward");
    let grads = reference::dense::backward(&xa, &wa, &ir, &gza);
    m.check(&dx, &grads.input, OP_RTOL, "dense input gradient");
    m.check(&dw, &grads.weight, OP_RTOL, "dense weight gradient");
    if let Some(gb) = grads.bias {
        m.check(&db, &gb, OP_RTOL, "dense bias gradient");
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
    m.check(&y, &ya, OP_RTOL, "activation forward");
    let expected = reference::activation::backward(&xa, &ya, kind, &gya);
    m.check(&dx, &expected, OP_RTOL, "activation backward");
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
        epilogue: None,
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
    m.check(&y, &infer_expected, GRAPH_RTOL, "batchnorm inference");

    let [mut mean, mut var] = [params[2].clone(), params[3].clone()];
    let expected =
        reference::norm::forward_train(&xa, &params[0], &params[1], &mut mean, &mut var, &ir);
    m.run(&norm::forward_train("bn", &ir, &t));
    m.check(&y, &expected, GRAPH_RTOL, "batchnorm training forward");
    m.check(&rm, &mean, OP_RTOL, "running mean");
    m.check(&rv, &var, OP_RTOL, "running variance");

    m.run(&norm::backward("bn", &t, &dy, Some(&dx), &dw, &db));
    let grads = reference::norm::backward_train(&xa, &params[0], &ir, &gya);
    m.check(&dx, &grads.input, GRAPH_RTOL, "batchnorm input gradient");
    m.check(&dw, &grads.weight, OP_RTOL, "batchnorm weight gradient");
    m.check(&db, &grads.bias, OP_RTOL, "batchnorm bias gradient");
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
    m.check(
        &y,
        &reference::dropout::forward(&xa, &maska),
        OP_RTOL,
        "dropout forward",
    );
    m.check(
        &dx,
        &reference::dropout::backward(&maska, &gya),
        OP_RTOL,
        "dropout backward",
    );
    m.run(&dropout::forward_infer("drop", &x, &y));
    m.check(&y, &xa, 0.0, "dropout inference");
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
    m.check(&y, &cat_expected, 0.0, "concat forward");
    let channels: Vec<usize> = shapes.iter().map(|s| s[1]).collect();
    for (dx, expected) in dxs
        .iter()
        .zip(reference::join::concat_backward(&channels, &gya))
    {
        m.check(dx, &expected, 0.0, "concat backward");
    }

    // Add the first input to itself and to a second tensor of its shape.
    let other = rng.tensor(&shapes[0], -1., 1.);
    let (o, sum, dsum, dfirst) = (
        m.put(&other),
        m.zeros(&shapes[0]),
        m.put(&xas[0]),
        m.zeros(&shapes[0]),
    );
    m.run(&join::add_forward("add", &[&xs[0], &o, &xs[0]], &sum, None));
    m.run(&join::add_backward(
        "add",
        &sum,
        &dsum,
        &[Some(&dfirst), None, Some(&dfirst)],
        None,
    ));
    let expected = reference::join::add_forward(&[&xas[0], &other, &xas[0]]);
    m.check(&sum, &expected, OP_RTOL, "add forward");
    m.check(&dfirst, &(&xas[0] * 2.0), OP_RTOL, "add backward");
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
        let mean = ArrayD::from_elem(IxDyn(&[]), expected);
        for per_sample in m.0.get(per_sample.buf, &[batch]) {
            let actual = per_sample
                .mean_axis(ndarray::Axis(0))
                .expect("batch is not empty");
            assert_close(&actual, &mean, OP_RTOL, &format!("{kind:?} loss"));
        }
        m.check(&dy, &grad, OP_RTOL, "loss gradient");
    }
}
