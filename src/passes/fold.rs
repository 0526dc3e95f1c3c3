//! Batchnorm folded into the preceding convolution for inference: with the running statistics
//! fixed, `bn(conv(x)) = conv'(x)` for the weights `w'[co] = w[co]·s[co]` and bias
//! `b'[co] = (b[co] − mean[co])·s[co] + beta[co]`, `s = gamma/√(var + eps)` (PyTorch's
//! `fuse_conv_bn_eval`). The inference schedule then computes `w'` and `b'` (one small kernel)
//! and runs the convolution straight into the batchnorm's output, with the batchnorm's fused
//! activation as its epilogue: one pass over the feature map instead of two, and no
//! convolution output buffer written. Training still runs both (the batch statistics change
//! every step).
//!
//! The rewrite only marks the batchnorm (`Node::folded`); the plan (`lower::step`) does the
//! rest. A batchnorm is folded when its input is a convolution with no other consumer and no
//! epilogue of its own (an activation between them would not be linear).

use crate::ir::{Graph, Op};

/// Marks every batchnorm that can be folded into its producing convolution (module doc).
pub fn batchnorms_into_convs(graph: &Graph) -> Graph {
    let mut consumers = vec![0usize; graph.nodes.len()];
    for input in graph.nodes.iter().flat_map(|n| &n.inputs) {
        consumers[input.0 as usize] += 1;
    }
    let mut folded = graph.clone();
    for id in graph.node_ids() {
        let node = graph.node(id);
        let (Op::BatchNorm(_), [producer]) = (&node.op, node.inputs.as_slice()) else {
            continue;
        };
        let p = graph.node(*producer);
        if matches!(p.op, Op::Conv(_))
            && consumers[producer.0 as usize] == 1
            && p.epilogue.is_none()
        {
            folded.nodes[id.0 as usize].folded = true;
        }
    }
    folded
}

/// The batchnorm folded into convolution `conv` of `graph`, if any.
pub fn folded_batchnorm(graph: &Graph, conv: crate::ir::NodeId) -> Option<crate::ir::NodeId> {
    graph
        .node_ids()
        .find(|&id| graph.node(id).folded && graph.node(id).inputs.first() == Some(&conv))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::verify::verify;
    use crate::ir::{Activation, NodeId};
    use crate::reference::fixtures::{plain_conv, GraphBuilder};

    /// input [1, 4, 4] → conv 2 (kernel 1, 2-D) → batchnorm; the conv's and batchnorm's ids.
    fn conv_bn() -> (GraphBuilder, NodeId, NodeId) {
        let mut b = GraphBuilder::new(&[1, 4, 4]);
        let c = b.conv("conv1", NodeId(0), plain_conv(1, 2, 1, 2), &[2, 4, 4]);
        let n = b.batchnorm("bn1", c, &[2, 4, 4]);
        (b, c, n)
    }

    fn folded(b: &GraphBuilder) -> Graph {
        let graph = batchnorms_into_convs(&b.graph);
        assert_eq!(verify(&graph), Ok(()));
        graph
    }

    #[test]
    fn a_batchnorm_after_its_convs_sole_use_is_folded() {
        let (b, c, n) = conv_bn();
        let graph = folded(&b);
        assert!(graph.node(n).folded);
        assert_eq!(folded_batchnorm(&graph, c), Some(n));
        assert_eq!(folded_batchnorm(&graph, NodeId(0)), None);
    }

    #[test]
    fn a_conv_read_elsewhere_or_activated_keeps_its_batchnorm() {
        let (mut b, c, n) = conv_bn();
        b.node("relu1", Op::Activation(Activation::Relu), &[c], &[2, 4, 4]);
        assert!(!folded(&b).node(n).folded);

        let (mut b, c, n) = conv_bn();
        b.graph.nodes[c.0 as usize].epilogue = Some(Activation::Relu);
        assert!(!folded(&b).node(n).folded);
    }

    #[test]
    fn a_batchnorm_after_anything_but_a_conv_stays() {
        let mut b = GraphBuilder::new(&[2, 4, 4]);
        let n = b.batchnorm("bn1", NodeId(0), &[2, 4, 4]);
        assert!(!folded(&b).node(n).folded);
    }
}
