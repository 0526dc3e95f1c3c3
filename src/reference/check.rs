//! Helpers for the reference's own tests: a seeded generator, random tensors built to stay
//! away from kinks and ties, and central finite differences computed in f64.
//!
//! Every backward is checked the same way: pick a random `r` of the output's shape, take the
//! scalar objective `sum(y · r)`, whose gradient with respect to `y` is `r`; then the analytic
//! gradient from `backward(.., gy = r)` must match the central differences of the objective.
//! Graphs for the tests are built by hand with [`GraphBuilder`].

use ndarray::{ArrayD, Dimension, IxDyn};

use crate::ir::{
    BatchNorm, Conv, Dense, Graph, Node, NodeId, Op, Param, ParamId, ParamKind, Shape,
};
use crate::span::Span;

/// Step of the central differences. The perturbed inputs are f32, so the step actually taken
/// (`x + h` rounded minus `x − h` rounded) is what the difference is divided by.
const STEP: f32 = 1e-2;

/// Allowed gap between analytic and numeric gradients: `ABS + REL · |numeric|`. With the step
/// above, the truncation error of smooth ops is ~1e-5 and the f32 rounding of the objective
/// ~1e-5, so 2e-3 leaves a wide margin while still catching any wrong term.
const ABS_TOLERANCE: f64 = 2e-3;
const REL_TOLERANCE: f64 = 2e-3;

/// SplitMix64: tiny, seeded, good enough to draw test tensors.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let unit = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * unit
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Uniform values in `[-1, 1)`.
pub fn uniform(shape: &[usize], rng: &mut Rng) -> ArrayD<f32> {
    ArrayD::from_shape_simple_fn(IxDyn(shape), || rng.uniform(-1.0, 1.0))
}

/// Values with `0.2 ≤ |v| < 1`, so that a step never crosses the kink of relu at 0.
pub fn away_from_zero(shape: &[usize], rng: &mut Rng) -> ArrayD<f32> {
    ArrayD::from_shape_simple_fn(IxDyn(shape), || {
        let magnitude = rng.uniform(0.2, 1.0);
        if rng.below(2) == 0 {
            magnitude
        } else {
            -magnitude
        }
    })
}

/// Distinct values spaced 0.05 apart, shuffled: no two can tie, even after a step of ±`STEP`,
/// so the maximum of a pooling window never changes place under the finite differences.
pub fn distinct(shape: &[usize], rng: &mut Rng) -> ArrayD<f32> {
    let count: usize = shape.iter().product();
    let mut values: Vec<f32> = (0..count).map(|i| i as f32 * 0.05 - 1.0).collect();
    for i in (1..count).rev() {
        values.swap(i, rng.below(i + 1));
    }
    ArrayD::from_shape_vec(IxDyn(shape), values).expect("count matches the shape")
}

/// `sum(y · r)` in f64: the scalar objective whose gradient with respect to `y` is `r`.
pub fn weighted_sum(y: &ArrayD<f32>, r: &ArrayD<f32>) -> f64 {
    assert_eq!(
        y.shape(),
        r.shape(),
        "objective weights must match the output"
    );
    y.iter().zip(r).map(|(&a, &b)| a as f64 * b as f64).sum()
}

/// Central differences of `objective` with respect to every element of `x`.
pub fn numeric_gradient(x: &ArrayD<f32>, objective: impl Fn(&ArrayD<f32>) -> f64) -> ArrayD<f64> {
    let mut probe = x.clone();
    let mut gradient = ArrayD::zeros(x.raw_dim());
    for (index, &value) in x.indexed_iter() {
        let (plus, minus) = (value + STEP, value - STEP);
        probe[&index] = plus;
        let above = objective(&probe);
        probe[&index] = minus;
        let below = objective(&probe);
        probe[&index] = value;
        gradient[&index] = (above - below) / (plus as f64 - minus as f64);
    }
    gradient
}

/// Panics, naming `what` and the first offending element, unless every element of the
/// analytic gradient is within tolerance of the numeric one.
pub fn assert_gradient_close(analytic: &ArrayD<f32>, numeric: &ArrayD<f64>, what: &str) {
    assert_eq!(analytic.shape(), numeric.shape(), "{what}: gradient shape");
    for ((index, &a), &n) in analytic.indexed_iter().zip(numeric) {
        let gap = (a as f64 - n).abs();
        assert!(
            gap <= ABS_TOLERANCE + REL_TOLERANCE * n.abs(),
            "{what}: gradient at {:?} is {a}, finite differences give {n}",
            index.slice()
        );
    }
}

/// Panics unless `actual` has the shape of `expected` and every element is within `tolerance`.
pub fn assert_all_close(actual: &ArrayD<f32>, expected: &ArrayD<f32>, tolerance: f32, what: &str) {
    assert_eq!(actual.shape(), expected.shape(), "{what}: shape");
    for ((index, &a), &e) in actual.indexed_iter().zip(expected) {
        assert!(
            (a - e).abs() <= tolerance,
            "{what}: element {:?} is {a}, expected {e}",
            index.slice()
        );
    }
}

/// Builds an [`ir::Graph`](Graph) by hand: the test writes every node's name and shape; the
/// reference's forward checks the shapes it computes against them.
pub struct GraphBuilder {
    pub graph: Graph,
}

impl GraphBuilder {
    /// A graph holding only its input node, `[C, *S]`.
    pub fn new(input: &[usize]) -> GraphBuilder {
        let mut builder = GraphBuilder {
            graph: Graph {
                name: "test".into(),
                nodes: Vec::new(),
                params: Vec::new(),
                output: NodeId(0),
                train: None,
                span: Span::default(),
            },
        };
        builder.node("input", Op::Input, &[], input);
        builder
    }

    /// Appends a node; the latest node is the graph's output.
    pub fn node(&mut self, name: &str, op: Op, inputs: &[NodeId], shape: &[usize]) -> NodeId {
        let id = NodeId(self.graph.nodes.len() as u32);
        self.graph.nodes.push(Node {
            op,
            inputs: inputs.to_vec(),
            shape: Shape(shape.to_vec()),
            span: Span::default(),
            name: name.into(),
            epilogue: None,
        });
        self.graph.output = id;
        id
    }

    /// A parameter `<node>.<suffix>` of the node about to be appended.
    fn param(&mut self, node: &str, kind: ParamKind, shape: &[usize]) -> ParamId {
        self.graph.params.push(Param {
            name: format!("{node}.{}", kind.suffix()),
            shape: shape.to_vec(),
            kind,
            node: NodeId(self.graph.nodes.len() as u32),
        });
        ParamId(self.graph.params.len() as u32 - 1)
    }

    /// A convolution with a bias; `conv`'s parameter ids are replaced by new parameters.
    pub fn conv(&mut self, name: &str, input: NodeId, conv: Conv, shape: &[usize]) -> NodeId {
        let weight_shape: Vec<usize> = [conv.out_channels, conv.in_channels / conv.groups]
            .into_iter()
            .chain(conv.kernel.iter().copied())
            .collect();
        let weight = self.param(name, ParamKind::Weight, &weight_shape);
        let bias = Some(self.param(name, ParamKind::Bias, &[conv.out_channels]));
        self.node(
            name,
            Op::Conv(Conv {
                weight,
                bias,
                ..conv
            }),
            &[input],
            shape,
        )
    }

    /// A batchnorm with PyTorch's defaults (eps 1e-5, momentum 0.1) over `shape[0]` channels.
    pub fn batchnorm(&mut self, name: &str, input: NodeId, shape: &[usize]) -> NodeId {
        let channels = [shape[0]];
        let bn = BatchNorm {
            channels: shape[0],
            eps: 1e-5,
            momentum: 0.1,
            weight: self.param(name, ParamKind::Weight, &channels),
            bias: self.param(name, ParamKind::Bias, &channels),
            running_mean: self.param(name, ParamKind::RunningMean, &channels),
            running_var: self.param(name, ParamKind::RunningVar, &channels),
        };
        self.node(name, Op::BatchNorm(bn), &[input], shape)
    }

    /// A dense layer with a bias.
    pub fn dense(&mut self, name: &str, input: NodeId, in_features: usize, units: usize) -> NodeId {
        let dense = Dense {
            in_features,
            units,
            weight: self.param(name, ParamKind::Weight, &[units, in_features]),
            bias: Some(self.param(name, ParamKind::Bias, &[units])),
        };
        self.node(name, Op::Dense(dense), &[input], &[units])
    }
}

/// A plain convolution over `axes` spatial axes (stride 1, no padding, dilation 1, one group);
/// tests change fields with struct update syntax. The parameter ids are placeholders.
pub fn plain_conv(in_channels: usize, out_channels: usize, kernel: usize, axes: usize) -> Conv {
    Conv {
        in_channels,
        out_channels,
        kernel: vec![kernel; axes],
        stride: vec![1; axes],
        padding: vec![(0, 0); axes],
        dilation: vec![1; axes],
        groups: 1,
        weight: ParamId(0),
        bias: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_gradient_of_a_cube_is_three_x_squared() {
        let x = ArrayD::from_shape_vec(IxDyn(&[3]), vec![-1.0f32, 0.5, 2.0]).unwrap();
        let numeric = numeric_gradient(&x, |x| x.iter().map(|&v| (v as f64).powi(3)).sum());
        let analytic = x.mapv(|v| 3.0 * v * v);
        assert_gradient_close(&analytic, &numeric, "cube");
    }

    #[test]
    #[should_panic(expected = "wrong: gradient at [1]")]
    fn a_wrong_gradient_is_caught() {
        let x = ArrayD::from_shape_vec(IxDyn(&[2]), vec![1.0f32, 2.0]).unwrap();
        let numeric = numeric_gradient(&x, |x| x.iter().map(|&v| (v as f64).powi(2)).sum());
        let wrong = ArrayD::from_shape_vec(IxDyn(&[2]), vec![2.0f32, 4.1]).unwrap();
        assert_gradient_close(&wrong, &numeric, "wrong");
    }

    #[test]
    fn distinct_values_never_tie() {
        let values = distinct(&[4, 5], &mut Rng::new(7));
        let mut sorted: Vec<f32> = values.iter().copied().collect();
        sorted.sort_by(f32::total_cmp);
        assert!(sorted.windows(2).all(|pair| pair[1] - pair[0] > 0.04));
    }
}
