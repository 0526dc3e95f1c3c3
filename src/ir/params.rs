//! Parameter counts, multiply-adds and memory, computed from the graph alone (one `match` arm
//! per op), so that `check`, `params`, training and benchmarks all report the same figures.
//!
//! Multiply-adds count the products of `conv` and `dense` (a bias add or an activation is not a
//! multiply-add), per image, as PyTorch profilers and d2l's tables do.

use super::{Graph, NodeId, Op, Shape};

/// Bytes per stored element (f32).
pub const BYTES_PER_ELEMENT: usize = 4;

/// Multiply-adds of one application of `op` to one image, or `None` on u64 overflow.
pub fn checked_macs(op: &Op, output: &Shape) -> Option<u64> {
    match op {
        Op::Conv(conv) => {
            let per_output = (conv.in_channels / conv.groups.max(1)) as u64;
            let window = conv
                .kernel
                .iter()
                .try_fold(per_output, |acc, &k| acc.checked_mul(k as u64))?;
            (output.numel() as u64).checked_mul(window)
        }
        Op::Dense(dense) => (dense.in_features as u64).checked_mul(dense.units as u64),
        Op::Input
        | Op::Pool(_)
        | Op::GlobalAvgPool
        | Op::Flatten
        | Op::Activation(_)
        | Op::Dropout { .. }
        | Op::BatchNorm(_)
        | Op::Identity
        | Op::Concat
        | Op::Add => Some(0),
    }
}

/// Multiply-adds of node `id` per image. `ir::build` rejects graphs where this overflows.
pub fn node_macs(graph: &Graph, id: NodeId) -> u64 {
    let node = graph.node(id);
    checked_macs(&node.op, &node.shape).unwrap_or(u64::MAX)
}

/// Trainable parameters owned by node `id` (what PyTorch's `parameters()` counts).
pub fn node_params(graph: &Graph, id: NodeId) -> usize {
    graph
        .params
        .iter()
        .filter(|p| p.node == id && p.kind.trainable())
        .map(|p| p.numel())
        .sum()
}

/// Whole-network figures for `cnnc check`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Totals {
    /// Trainable parameters.
    pub params: usize,
    /// Buffers (batchnorm running statistics).
    pub buffers: usize,
    /// Multiply-adds per image.
    pub macs: u64,
    /// Bytes of parameters and buffers.
    pub param_bytes: usize,
    /// Peak bytes of live activations per image when the nodes run in index order and each
    /// value is freed after its last use (inference).
    pub inference_activation_bytes: usize,
    /// Bytes of every node's output per image: training keeps them all for the backward pass.
    pub training_activation_bytes: usize,
}

pub fn totals(graph: &Graph) -> Totals {
    let params = graph
        .params
        .iter()
        .filter(|p| p.kind.trainable())
        .map(|p| p.numel())
        .sum();
    let buffers = graph
        .params
        .iter()
        .filter(|p| !p.kind.trainable())
        .map(|p| p.numel())
        .sum();
    Totals {
        params,
        buffers,
        macs: graph
            .node_ids()
            .map(|id| node_macs(graph, id))
            .fold(0u64, u64::saturating_add),
        param_bytes: (params + buffers) * BYTES_PER_ELEMENT,
        inference_activation_bytes: inference_activation_bytes(graph),
        training_activation_bytes: graph.nodes.iter().map(|n| n.shape.numel()).sum::<usize>()
            * BYTES_PER_ELEMENT,
    }
}

/// Peak of live activations per image under index-order execution with liveness.
pub fn inference_activation_bytes(graph: &Graph) -> usize {
    let count = graph.nodes.len();
    // The output lives to the end; every other value until its last consumer has run.
    let mut last_use: Vec<usize> = (0..count).collect();
    for (i, node) in graph.nodes.iter().enumerate() {
        for input in &node.inputs {
            let j = input.0 as usize;
            last_use[j] = last_use[j].max(i);
        }
    }
    if let Some(out) = last_use.get_mut(graph.output.0 as usize) {
        *out = count;
    }
    let mut live = 0usize;
    let mut peak = 0usize;
    let mut frees: Vec<Vec<usize>> = vec![Vec::new(); count + 1];
    for (j, &last) in last_use.iter().enumerate() {
        frees[last].push(j);
    }
    for (i, node) in graph.nodes.iter().enumerate() {
        live += node.shape.numel();
        peak = peak.max(live);
        for &j in &frees[i] {
            live -= graph.nodes[j].shape.numel();
        }
    }
    peak * BYTES_PER_ELEMENT
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Node, Shape};
    use crate::span::Span;

    fn node(op: Op, inputs: &[u32], dims: &[usize]) -> Node {
        Node {
            op,
            inputs: inputs.iter().map(|&i| NodeId(i)).collect(),
            shape: Shape(dims.to_vec()),
            span: Span::default(),
            name: String::new(),
            epilogue: None,
            folded: false,
        }
    }

    #[test]
    fn liveness_frees_values_after_their_last_use() {
        // input(10) → a(20) → b(5) → c = add(b, b) (5): peak is when a and b are both live.
        let graph = Graph {
            name: "g".into(),
            nodes: vec![
                node(Op::Input, &[], &[10]),
                node(Op::Identity, &[0], &[20]),
                node(Op::Identity, &[1], &[5]),
                node(Op::Add, &[2, 2], &[5]),
            ],
            params: vec![],
            output: NodeId(3),
            train: None,
            span: Span::default(),
        };
        assert_eq!(inference_activation_bytes(&graph), (10 + 20) * 4);
        assert_eq!(totals(&graph).training_activation_bytes, 40 * 4);
    }
}
