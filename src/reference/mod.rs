//! The reference implementation: every op forward and backward on `ndarray`, written to be
//! obviously right rather than fast. It is the oracle the JIT is checked against, and it sees
//! only `ir`.
//!
//! Tensors are `ArrayD<f32>` with the batch axis first (`[N, C, *S]` or `[N, F]`); parameters
//! are in PyTorch layouts, indexed by [`ParamId`]. Sums are accumulated in f64.
//! Each op family has a file with `forward` and `backward` side by side; this file runs a whole
//! [`Graph`]: [`forward`] in node order, [`backward`] in reverse node order, summing the
//! gradients of values read by several nodes. A node with an epilogue (`passes::fuse`) is its
//! op followed by the activation, forward and backward, so the reference of a fused graph is
//! exactly that of the graph before fusion.
//!
//! Its own tests check every backward against central finite differences (helpers in
//! `check.rs`) and whole graphs against the committed PyTorch goldens (`golden.rs`); the
//! hand-built graphs and the golden loader they share with the integration tests are in
//! `fixtures.rs`.
//!
//! The functions panic when given tensors that disagree with the graph (wrong count or shape
//! of parameters, a missing dropout mask in training): those are mistakes of the calling code,
//! since user files and user data are checked before they reach the engine.

pub mod activation;
#[cfg(test)]
pub(crate) mod check;
pub mod conv;
pub mod dense;
pub mod dropout;
pub mod fixtures;
#[cfg(test)]
mod golden;
pub mod join;
pub mod loss;
pub mod norm;
pub mod pool;
mod window;

use ndarray::{ArrayD, IxDyn};

use crate::ir::{Graph, NodeId, Op, ParamId};

/// Training runs dropout (with the given masks) and batchnorm with batch statistics, updating
/// the running statistics; inference makes dropout the identity and uses running statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Train,
    Infer,
}

/// Gradients of a graph's output with respect to its parameters and input.
#[derive(Clone, Debug)]
pub struct Gradients {
    /// Indexed by [`ParamId`]; `None` for buffers (running statistics), zeros for a trainable
    /// parameter the output does not depend on.
    pub params: Vec<Option<ArrayD<f32>>>,
    /// Gradient with respect to the network input, `[N, C, *S]`.
    pub input: ArrayD<f32>,
}

/// Runs every node of `graph` on `input` (`[N, *input shape]`) and returns every node's value,
/// indexed by [`NodeId`]. `params` are indexed by [`ParamId`]; in [`Mode::Train`] the batchnorm
/// running statistics in it are updated, and `masks[node]` is the mask of each dropout node
/// (`0` or `1/(1 − p)` per element, the node's output shape).
///
/// # Panics
/// If `params` or `input` disagree with the graph's shapes, or a dropout mask is missing in
/// training.
pub fn forward(
    graph: &Graph,
    params: &mut [ArrayD<f32>],
    input: &ArrayD<f32>,
    mode: Mode,
    masks: &[Option<ArrayD<f32>>],
) -> Vec<ArrayD<f32>> {
    check_params(graph, params);
    assert_eq!(
        &input.shape()[1..],
        &graph.input().shape.0[..],
        "input shape (after the batch axis)"
    );
    let mut values: Vec<ArrayD<f32>> = Vec::with_capacity(graph.nodes.len());
    for (id, node) in graph.node_ids().zip(&graph.nodes) {
        let x = |k: usize| &values[node.inputs[k].0 as usize];
        let value = match &node.op {
            Op::Input => input.clone(),
            Op::Conv(c) => conv::forward(
                x(0),
                param(params, c.weight),
                c.bias.map(|b| param(params, b)),
                c,
            ),
            Op::Pool(p) => pool::forward(x(0), p),
            Op::GlobalAvgPool => pool::global_avg_forward(x(0)),
            Op::Flatten => join::flatten_forward(x(0)),
            Op::Dense(d) => dense::forward(
                x(0),
                param(params, d.weight),
                d.bias.map(|b| param(params, b)),
                d,
            ),
            Op::Activation(a) => activation::forward(x(0), *a),
            Op::Dropout { .. } => match mode {
                Mode::Train => dropout::forward(x(0), mask(masks, id)),
                Mode::Infer => x(0).clone(),
            },
            Op::BatchNorm(bn) => {
                let (weight, bias) = (
                    param(params, bn.weight).clone(),
                    param(params, bn.bias).clone(),
                );
                match mode {
                    Mode::Train => {
                        let [mean, var] = params
                            .get_disjoint_mut([
                                bn.running_mean.0 as usize,
                                bn.running_var.0 as usize,
                            ])
                            .expect("batchnorm: running mean and variance are two parameters");
                        norm::forward_train(x(0), &weight, &bias, mean, var, bn)
                    }
                    Mode::Infer => {
                        let (mean, var) = (
                            param(params, bn.running_mean),
                            param(params, bn.running_var),
                        );
                        norm::forward_infer(x(0), &weight, &bias, mean, var, bn)
                    }
                }
            }
            Op::Identity => x(0).clone(),
            Op::Concat => join::concat_forward(&inputs(node.inputs.as_slice(), &values)),
            Op::Add => join::add_forward(&inputs(node.inputs.as_slice(), &values)),
        };
        let value = match node.epilogue {
            Some(act) => activation::forward(&value, act),
            None => value,
        };
        assert_eq!(
            &value.shape()[1..],
            &node.shape.0[..],
            "node {} ({}): the reference's shape disagrees with the IR's",
            node.name,
            node.op.name()
        );
        values.push(value);
    }
    values
}

/// Back-propagates `grad_output` (the gradient of the graph's output node) through the values
/// of a [`Mode::Train`] [`forward`]: batchnorm is differentiated with its batch statistics and
/// dropout through `masks`. Every node's gradient is complete before it is used, because
/// nodes are visited in reverse index order and inputs always have smaller ids.
///
/// # Panics
/// If the tensors disagree with the graph's shapes, or a dropout mask is missing.
pub fn backward(
    graph: &Graph,
    params: &[ArrayD<f32>],
    values: &[ArrayD<f32>],
    masks: &[Option<ArrayD<f32>>],
    grad_output: ArrayD<f32>,
) -> Gradients {
    check_params(graph, params);
    assert_eq!(values.len(), graph.nodes.len(), "one value per node");
    assert_eq!(
        grad_output.shape(),
        values[graph.output.0 as usize].shape(),
        "output gradient shape"
    );
    let mut node_grads: Vec<Option<ArrayD<f32>>> = vec![None; graph.nodes.len()];
    node_grads[graph.output.0 as usize] = Some(grad_output);
    let mut param_grads: Vec<Option<ArrayD<f32>>> = graph
        .params
        .iter()
        .map(|p| p.kind.trainable().then(|| ArrayD::zeros(IxDyn(&p.shape))))
        .collect();
    let mut input_grad = None;

    for id in (0..graph.nodes.len() as u32).rev().map(NodeId) {
        let Some(gy) = node_grads[id.0 as usize].take() else {
            continue; // the output does not depend on this node
        };
        let node = graph.node(id);
        let gy = match node.epilogue {
            Some(act) => activation::backward_from_output(&values[id.0 as usize], act, &gy),
            None => gy,
        };
        let x = |k: usize| &values[node.inputs[k].0 as usize];
        let mut add_param =
            |id: ParamId, g: ArrayD<f32>| accumulate(&mut param_grads[id.0 as usize], g);
        let grads_of_inputs: Vec<ArrayD<f32>> = match &node.op {
            Op::Input => {
                input_grad = Some(gy);
                Vec::new()
            }
            Op::Conv(c) => {
                let g = conv::backward(x(0), param(params, c.weight), c, &gy);
                add_param(c.weight, g.weight);
                if let (Some(id), Some(gb)) = (c.bias, g.bias) {
                    add_param(id, gb);
                }
                vec![g.input]
            }
            Op::Pool(p) => vec![pool::backward(x(0), p, &gy)],
            Op::GlobalAvgPool => vec![pool::global_avg_backward(x(0).shape(), &gy)],
            Op::Flatten => vec![join::flatten_backward(x(0).shape(), &gy)],
            Op::Dense(d) => {
                let g = dense::backward(x(0), param(params, d.weight), d, &gy);
                add_param(d.weight, g.weight);
                if let (Some(id), Some(gb)) = (d.bias, g.bias) {
                    add_param(id, gb);
                }
                vec![g.input]
            }
            Op::Activation(a) => vec![activation::backward(x(0), &values[id.0 as usize], *a, &gy)],
            Op::Dropout { .. } => vec![dropout::backward(mask(masks, id), &gy)],
            Op::BatchNorm(bn) => {
                let g = norm::backward_train(x(0), param(params, bn.weight), bn, &gy);
                add_param(bn.weight, g.weight);
                add_param(bn.bias, g.bias);
                vec![g.input]
            }
            Op::Identity => vec![gy],
            Op::Concat => {
                let channels: Vec<usize> = node
                    .inputs
                    .iter()
                    .map(|i| values[i.0 as usize].shape()[1])
                    .collect();
                join::concat_backward(&channels, &gy)
            }
            Op::Add => vec![gy; node.inputs.len()],
        };
        for (input, g) in node.inputs.iter().zip(grads_of_inputs) {
            accumulate(&mut node_grads[input.0 as usize], g);
        }
    }
    Gradients {
        params: param_grads,
        input: input_grad.unwrap_or_else(|| ArrayD::zeros(values[0].raw_dim())),
    }
}

/// Adds `g` into a gradient slot (a value read by several nodes gets the sum).
fn accumulate(slot: &mut Option<ArrayD<f32>>, g: ArrayD<f32>) {
    match slot {
        Some(sum) => *sum += &g,
        None => *slot = Some(g),
    }
}

fn param(params: &[ArrayD<f32>], id: ParamId) -> &ArrayD<f32> {
    &params[id.0 as usize]
}

fn inputs<'a>(ids: &[NodeId], values: &'a [ArrayD<f32>]) -> Vec<&'a ArrayD<f32>> {
    ids.iter().map(|id| &values[id.0 as usize]).collect()
}

fn mask(masks: &[Option<ArrayD<f32>>], node: NodeId) -> &ArrayD<f32> {
    masks
        .get(node.0 as usize)
        .and_then(Option::as_ref)
        .unwrap_or_else(|| panic!("dropout node {} has no mask in training", node.0))
}

fn check_params(graph: &Graph, params: &[ArrayD<f32>]) {
    assert_eq!(params.len(), graph.params.len(), "one tensor per parameter");
    for (tensor, declared) in params.iter().zip(&graph.params) {
        assert_eq!(
            tensor.shape(),
            &declared.shape[..],
            "shape of parameter {}",
            declared.name
        );
    }
}

#[cfg(test)]
mod tests {
    use super::check::{assert_gradient_close, distinct, numeric_gradient, uniform, Rng};
    use super::fixtures::{plain_conv, GraphBuilder};
    use super::*;
    use crate::ir::{Activation, Conv, ParamKind, Pool, PoolKind};

    /// A 2-D convolution with `padding` on both sides of both axes and `groups` groups.
    fn conv(
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        padding: usize,
        groups: usize,
    ) -> Conv {
        Conv {
            padding: vec![(padding, padding); 2],
            groups,
            ..plain_conv(in_channels, out_channels, kernel, 2)
        }
    }

    /// Trainable parameters uniform in [−1, 1); running mean 0 and variance 1, as PyTorch.
    fn init(graph: &Graph, rng: &mut Rng) -> Vec<ArrayD<f32>> {
        graph
            .params
            .iter()
            .map(|p| match p.kind {
                ParamKind::Weight | ParamKind::Bias => uniform(&p.shape, rng),
                ParamKind::RunningMean => ArrayD::zeros(IxDyn(&p.shape)),
                ParamKind::RunningVar => ArrayD::ones(IxDyn(&p.shape)),
            })
            .collect()
    }

    /// A 2-D pooling with the same kernel, stride and padding on both axes.
    fn pool(kind: PoolKind, kernel: usize, stride: usize, padding: usize) -> Pool {
        Pool {
            kind,
            kernel: vec![kernel; 2],
            stride: vec![stride; 2],
            padding: vec![padding; 2],
        }
    }

    /// input [2, 4, 4] → conv → batchnorm → tanh, concat with a max pool of the input, then
    /// add that concat to a grouped 1×1 conv of itself (one value, two consumers), average
    /// pool, dropout, flatten, dense 3. Returns the graph and the dropout node.
    fn branching_graph() -> (Graph, NodeId) {
        let mut b = GraphBuilder::new(&[2, 4, 4]);
        let input = NodeId(0);
        let c1 = b.conv("conv1", input, conv(2, 3, 3, 1, 1), &[3, 4, 4]);
        let bn = b.batchnorm("batchnorm1", c1, &[3, 4, 4]);
        let t = b.node("tanh1", Op::Activation(Activation::Tanh), &[bn], &[3, 4, 4]);
        let mp = b.node(
            "maxpool1",
            Op::Pool(pool(PoolKind::Max, 3, 1, 1)),
            &[input],
            &[2, 4, 4],
        );
        let cat = b.node("concat1", Op::Concat, &[t, mp], &[5, 4, 4]);
        let c2 = b.conv("conv2", cat, conv(5, 5, 1, 0, 5), &[5, 4, 4]);
        let sum = b.node("add1", Op::Add, &[cat, c2], &[5, 4, 4]);
        let ap = b.node(
            "avgpool1",
            Op::Pool(pool(PoolKind::Avg, 2, 2, 0)),
            &[sum],
            &[5, 2, 2],
        );
        let drop = b.node("dropout1", Op::Dropout { p: 0.5 }, &[ap], &[5, 2, 2]);
        let flat = b.node("flatten1", Op::Flatten, &[drop], &[20]);
        b.dense("dense1", flat, 20, 3);
        (b.graph, drop)
    }

    /// Checks the gradients of `loss(forward(graph))` with respect to the input and every
    /// trainable parameter against finite differences, in training mode.
    fn check_graph(
        graph: &Graph,
        x: &ArrayD<f32>,
        masks: &[Option<ArrayD<f32>>],
        loss: impl Fn(&ArrayD<f32>) -> (f32, ArrayD<f32>),
        rng: &mut Rng,
    ) {
        let params = init(graph, rng);
        let objective = |x: &ArrayD<f32>, params: &[ArrayD<f32>]| {
            let mut params = params.to_vec(); // the running statistics change on every call
            let values = forward(graph, &mut params, x, Mode::Train, masks);
            loss(&values[graph.output.0 as usize]).0 as f64
        };
        let mut updated = params.clone();
        let values = forward(graph, &mut updated, x, Mode::Train, masks);
        let (_, grad_output) = loss(&values[graph.output.0 as usize]);
        let grads = backward(graph, &params, &values, masks, grad_output);

        let gx = numeric_gradient(x, |x| objective(x, &params));
        assert_gradient_close(&grads.input, &gx, "graph input");
        for (index, declared) in graph.params.iter().enumerate() {
            let Some(analytic) = &grads.params[index] else {
                assert!(
                    !declared.kind.trainable(),
                    "{} has no gradient",
                    declared.name
                );
                continue;
            };
            let numeric = numeric_gradient(&params[index], |p| {
                let mut probe = params.clone();
                probe[index] = p.clone();
                objective(x, &probe)
            });
            assert_gradient_close(analytic, &numeric, &declared.name);
        }
    }

    #[test]
    fn branching_graph_backward_matches_finite_differences() {
        let (graph, drop) = branching_graph();
        let mut rng = Rng::new(23);
        // Distinct inputs keep the max pool away from ties.
        let x = distinct(&[2, 2, 4, 4], &mut rng);
        let mut masks = vec![None; graph.nodes.len()];
        masks[drop.0 as usize] =
            Some(uniform(&[2, 5, 2, 2], &mut rng).mapv(|u| if u > 0.0 { 2.0 } else { 0.0 }));
        check_graph(
            &graph,
            &x,
            &masks,
            |y| loss::cross_entropy(y, &[2, 0]),
            &mut rng,
        );
    }

    /// A 1-D graph through the remaining ops: dilated conv, sigmoid, global average pooling,
    /// identity and softmax, under a mean squared error.
    #[test]
    fn one_dimensional_graph_backward_matches_finite_differences() {
        let mut b = GraphBuilder::new(&[2, 7]);
        let dilated = Conv {
            padding: vec![(1, 1)],
            dilation: vec![2],
            ..plain_conv(2, 3, 2, 1)
        };
        let c = b.conv("conv1", NodeId(0), dilated, &[3, 7]);
        let s = b.node(
            "sigmoid1",
            Op::Activation(Activation::Sigmoid),
            &[c],
            &[3, 7],
        );
        let g = b.node("global_avgpool1", Op::GlobalAvgPool, &[s], &[3]);
        let i = b.node("identity1", Op::Identity, &[g], &[3]);
        b.node("softmax1", Op::Activation(Activation::Softmax), &[i], &[3]);
        let mut rng = Rng::new(29);
        let x = uniform(&[3, 2, 7], &mut rng);
        let target = uniform(&[3, 3], &mut rng);
        check_graph(&b.graph, &x, &[], |y| loss::mse(y, &target), &mut rng);
    }

    #[test]
    fn training_updates_running_statistics_and_inference_does_not() {
        let (graph, drop) = branching_graph();
        let mut rng = Rng::new(31);
        let mut params = init(&graph, &mut rng);
        let x = uniform(&[2, 2, 4, 4], &mut rng);
        let running: Vec<usize> = (0..graph.params.len())
            .filter(|&i| !graph.params[i].kind.trainable())
            .collect();
        let before: Vec<ArrayD<f32>> = running.iter().map(|&i| params[i].clone()).collect();

        let values = forward(&graph, &mut params, &x, Mode::Infer, &[]);
        assert!(
            running.iter().zip(&before).all(|(&i, b)| params[i] == *b),
            "inference changed a buffer"
        );
        // Dropout is the identity in inference.
        assert_eq!(values[drop.0 as usize], values[drop.0 as usize - 1]);

        let mut masks = vec![None; graph.nodes.len()];
        masks[drop.0 as usize] = Some(ArrayD::from_elem(IxDyn(&[2, 5, 2, 2]), 1.0));
        forward(&graph, &mut params, &x, Mode::Train, &masks);
        assert!(
            running.iter().zip(&before).all(|(&i, b)| params[i] != *b),
            "training left a buffer unchanged"
        );
    }

    #[test]
    #[should_panic(expected = "the reference's shape disagrees with the IR's")]
    fn a_wrong_node_shape_is_reported() {
        let mut b = GraphBuilder::new(&[1, 4]);
        b.node("flatten1", Op::Flatten, &[NodeId(0)], &[5]);
        forward(
            &b.graph,
            &mut [],
            &ArrayD::zeros(IxDyn(&[1, 1, 4])),
            Mode::Infer,
            &[],
        );
    }
}
