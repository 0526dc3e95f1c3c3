//! Initial values of every parameter and buffer, seeded and reproducible.
//!
//! [`Init::PyTorch`] is each layer's `reset_parameters()`: conv and dense weights
//! `kaiming_uniform_(a=√5)`, which is U(−1/√fan_in, 1/√fan_in), and biases U(±1/√fan_in) with
//! the weight's fan-in. [`Init::Xavier`] is `xavier_uniform_` on conv and dense weights,
//! U(±√(6/(fan_in + fan_out))), as d2l's `init_cnn` (biases keep PyTorch's default).
//! Batchnorm: weight 1, bias 0, running mean 0, running variance 1.
//!
//! Fans come from the weight's PyTorch layout (`torch.nn.init._calculate_fan_in_and_fan_out`):
//! for `[out, in/groups, *kernel]`, fan_in = in/groups · Πkernel and fan_out = out · Πkernel.
//! The numbers are drawn from [`Stream::Init`], parameter after parameter in `Graph::params`
//! order; they are not PyTorch's (its generator is another), only its distributions.

use crate::ir::{Graph, Init, Op, Param, ParamKind};
use crate::runtime::{rng, Stream};
use rand::RngExt;

/// `(fan_in, fan_out)` of a conv or dense weight of PyTorch layout `shape`.
pub fn fans(shape: &[usize]) -> (usize, usize) {
    let receptive: usize = shape.iter().skip(2).product();
    let out = shape.first().copied().unwrap_or(1);
    let inputs = shape.get(1).copied().unwrap_or(1);
    (inputs * receptive, out * receptive)
}

/// How one parameter starts.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Start {
    Constant(f32),
    Uniform { bound: f32 },
}

fn uniform_bound(fan_in: usize) -> f32 {
    if fan_in == 0 {
        0.0
    } else {
        1.0 / (fan_in as f32).sqrt()
    }
}

/// The rule for `param` of `graph`, from the op that owns it.
fn start(graph: &Graph, param: &Param, init: Init) -> Start {
    let weight_of = |weight| fans(&graph.param(weight).shape);
    match (&graph.node(param.node).op, param.kind) {
        (Op::Conv(_) | Op::Dense(_), ParamKind::Weight) => {
            let (fan_in, fan_out) = fans(&param.shape);
            match init {
                Init::PyTorch => Start::Uniform {
                    bound: uniform_bound(fan_in),
                },
                Init::Xavier => Start::Uniform {
                    bound: (6.0 / (fan_in + fan_out).max(1) as f32).sqrt(),
                },
            }
        }
        (Op::Conv(conv), ParamKind::Bias) => Start::Uniform {
            bound: uniform_bound(weight_of(conv.weight).0),
        },
        (Op::Dense(dense), ParamKind::Bias) => Start::Uniform {
            bound: uniform_bound(weight_of(dense.weight).0),
        },
        (_, ParamKind::Weight) | (_, ParamKind::RunningVar) => Start::Constant(1.0),
        (_, ParamKind::Bias) | (_, ParamKind::RunningMean) => Start::Constant(0.0),
    }
}

/// Initial values of every entry of `graph.params`, in order, for `seed`.
pub fn initialize(graph: &Graph, init: Init, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = rng(seed, Stream::Init);
    graph
        .params
        .iter()
        .map(|param| match start(graph, param, init) {
            Start::Constant(value) => vec![value; param.numel()],
            Start::Uniform { bound } => (0..param.numel())
                .map(|_| bound * (2.0 * rng.random::<f32>() - 1.0))
                .collect(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::SourceMap;

    /// conv 6 kernel=3 groups=2 → batchnorm → flatten → dense 10, built by the front end.
    fn graph() -> Graph {
        let text =
            "network t { input [4, 5, 5]; conv 6 kernel=3 groups=2; batchnorm; flatten; dense 10 }";
        let mut graphs =
            crate::load_str("t.cnn", text, &mut SourceMap::default()).expect("valid network");
        graphs.remove(0)
    }

    fn max_abs(values: &[f32]) -> f32 {
        values.iter().fold(0.0, |m, v| m.max(v.abs()))
    }

    #[test]
    fn fan_in_of_a_grouped_conv_is_in_over_groups_times_kernel() {
        assert_eq!(fans(&[6, 2, 3, 3]), (18, 54));
        assert_eq!(fans(&[10, 54]), (54, 10));
    }

    #[test]
    fn pytorch_default_bounds_and_batchnorm_constants() {
        let g = graph();
        let names: Vec<&str> = g.params.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "conv1.weight",
                "conv1.bias",
                "batchnorm1.weight",
                "batchnorm1.bias",
                "batchnorm1.running_mean",
                "batchnorm1.running_var",
                "dense1.weight",
                "dense1.bias"
            ]
        );
        let values = initialize(&g, Init::PyTorch, 0);
        let conv_bound = 1.0 / 18f32.sqrt();
        let dense_bound = 1.0 / 54f32.sqrt();
        for (index, bound) in [
            (0, conv_bound),
            (1, conv_bound),
            (6, dense_bound),
            (7, dense_bound),
        ] {
            let m = max_abs(&values[index]);
            // Drawn from U(±bound): inside it, and not a collapsed range (≥ half of it is used).
            assert!(
                m <= bound && m > 0.5 * bound,
                "param {index}: max {m}, bound {bound}"
            );
        }
        assert_eq!(values[2], vec![1.0; 6]);
        assert_eq!(values[3], vec![0.0; 6]);
        assert_eq!(values[4], vec![0.0; 6]);
        assert_eq!(values[5], vec![1.0; 6]);
        assert_eq!(
            values.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![108, 6, 6, 6, 6, 6, 540, 10]
        );
    }

    #[test]
    fn xavier_changes_weights_only() {
        let pytorch = initialize(&graph(), Init::PyTorch, 3);
        let xavier = initialize(&graph(), Init::Xavier, 3);
        let conv_bound = (6.0f32 / (18.0 + 54.0)).sqrt();
        let m = max_abs(&xavier[0]);
        assert!(
            m <= conv_bound && m > 0.5 * conv_bound,
            "{m} vs {conv_bound}"
        );
        let dense_bound = (6.0f32 / (54.0 + 10.0)).sqrt();
        assert!(max_abs(&xavier[6]) <= dense_bound);
        assert_eq!(xavier[2..6], pytorch[2..6]);
    }

    #[test]
    fn seeded_and_reproducible() {
        assert_eq!(
            initialize(&graph(), Init::PyTorch, 9),
            initialize(&graph(), Init::PyTorch, 9)
        );
        assert_ne!(
            initialize(&graph(), Init::PyTorch, 9),
            initialize(&graph(), Init::PyTorch, 10)
        );
    }
}
