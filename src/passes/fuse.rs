//! Activation fusion: an activation whose input is produced by a conv, dense, batchnorm or add
//! node with no other consumer runs as that node's *epilogue*, inside its kernel (one pass over
//! memory instead of two, forward and backward).
//!
//! The rewrite keeps every node: the producer `p` gets `epilogue = Some(act)` and its value
//! becomes the activated one; the activation node becomes an `identity` of `p`, which the plan
//! lowers to no kernel (it aliases `p`'s value and gradient buffers). The gradient arriving at
//! `p` is then the gradient with respect to the activated output, and `p`'s backward forms
//! `dy·act'(y)` from the output `y` alone: so only activations whose derivative is a function of
//! their output are fused, and `p` must have no other consumer (which would read the
//! un-activated value).

use crate::ir::{Activation, Graph, Op};

/// Whether `producer`'s kernel can apply `activation` as its epilogue: one rule per line.
fn fusable(producer: &Op, activation: Activation) -> bool {
    match (producer, activation) {
        // The softmax of one element needs its whole channel column.
        (_, Activation::Softmax) => false,
        // With a slope ≤ 0 (or NaN), the output's sign no longer tells which side x was on.
        (_, Activation::LeakyRelu { slope }) if slope.is_nan() || slope <= 0.0 => false,
        (Op::Conv(_), _) => true,
        (Op::Dense(_), _) => true,
        // ResNet's conv → batchnorm → relu: the relu goes into the batchnorm.
        (Op::BatchNorm(_), _) => true,
        // A residual block's add → relu.
        (Op::Add, _) => true,
        _ => false,
    }
}

/// Moves every fusable activation into its producer (see the module doc).
pub fn activations_into_producers(graph: &Graph) -> Graph {
    let mut consumers = vec![0usize; graph.nodes.len()];
    for input in graph.nodes.iter().flat_map(|n| &n.inputs) {
        consumers[input.0 as usize] += 1;
    }
    let mut fused = graph.clone();
    for id in graph.node_ids() {
        let node = graph.node(id);
        let (Op::Activation(activation), [producer]) = (&node.op, node.inputs.as_slice()) else {
            continue;
        };
        let p = &fused.nodes[producer.0 as usize];
        if consumers[producer.0 as usize] == 1
            && p.epilogue.is_none()
            && fusable(&p.op, *activation)
        {
            fused.nodes[producer.0 as usize].epilogue = Some(*activation);
            fused.nodes[id.0 as usize].op = Op::Identity;
        }
    }
    fused
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::verify::verify;
    use crate::ir::NodeId;
    use crate::reference::fixtures::{plain_conv, GraphBuilder};

    /// input [2, 4] → conv 3 (kernel 1) → `activation`; the conv's and activation's ids.
    fn conv_then(activation: Activation) -> (GraphBuilder, NodeId, NodeId) {
        let mut b = GraphBuilder::new(&[2, 4]);
        let conv = plain_conv(2, 3, 1, 1);
        let c = b.conv("conv1", NodeId(0), conv, &[3, 4]);
        let a = b.node("act1", Op::Activation(activation), &[c], &[3, 4]);
        (b, c, a)
    }

    fn fused(b: &GraphBuilder) -> Graph {
        let graph = activations_into_producers(&b.graph);
        assert_eq!(verify(&graph), Ok(()));
        graph
    }

    #[test]
    fn an_activation_after_its_sole_producer_becomes_an_identity() {
        for act in [
            Activation::Relu,
            Activation::LeakyRelu { slope: 0.01 },
            Activation::Sigmoid,
            Activation::Tanh,
        ] {
            let (b, c, a) = conv_then(act);
            let graph = fused(&b);
            assert_eq!(graph.node(c).epilogue, Some(act));
            assert_eq!(graph.node(a).op, Op::Identity);
            assert_eq!(graph.node(a).inputs, vec![c]);
            // Everything else is kept: names, shapes, parameters, the output.
            assert_eq!(graph.params, b.graph.params);
            assert_eq!(graph.output, b.graph.output);
            let names = |g: &Graph| g.nodes.iter().map(|n| n.name.clone()).collect::<Vec<_>>();
            assert_eq!(names(&graph), names(&b.graph));
        }
    }

    #[test]
    fn softmax_and_non_positive_leaky_slopes_are_not_fused() {
        for act in [
            Activation::Softmax,
            Activation::LeakyRelu { slope: 0.0 },
            Activation::LeakyRelu { slope: -0.5 },
        ] {
            let (b, _, _) = conv_then(act);
            assert_eq!(fused(&b), b.graph, "{act:?}");
        }
    }

    #[test]
    fn a_producer_with_two_consumers_is_not_fused() {
        let (mut b, c, a) = conv_then(Activation::Relu);
        b.node("add1", Op::Add, &[c, a], &[3, 4]);
        assert_eq!(fused(&b), b.graph);
    }

    /// The second of two stacked activations stays a node; so does an activation of a pooling.
    #[test]
    fn a_producer_takes_one_epilogue_and_only_listed_ops_take_one() {
        let (mut b, c, a) = conv_then(Activation::Relu);
        let t = b.node("tanh1", Op::Activation(Activation::Tanh), &[a], &[3, 4]);
        let g = b.node("global_avgpool1", Op::GlobalAvgPool, &[t], &[3]);
        let s = b.node("sigmoid1", Op::Activation(Activation::Sigmoid), &[g], &[3]);
        let graph = fused(&b);
        assert_eq!(graph.node(c).epilogue, Some(Activation::Relu));
        assert_eq!(graph.node(t).op, Op::Activation(Activation::Tanh));
        assert_eq!(graph.node(s).op, Op::Activation(Activation::Sigmoid));
        assert_eq!(graph.node(g).epilogue, None);
    }

    /// Batchnorm → relu and add → relu, as in a residual block.
    #[test]
    fn batchnorm_and_add_take_epilogues() {
        let (mut b, c, _) = conv_then(Activation::Sigmoid);
        let bn = b.batchnorm("batchnorm1", NodeId(2), &[3, 4]);
        let r1 = b.node("relu1", Op::Activation(Activation::Relu), &[bn], &[3, 4]);
        let sum = b.node("add1", Op::Add, &[r1, NodeId(2)], &[3, 4]);
        let r2 = b.node("relu2", Op::Activation(Activation::Relu), &[sum], &[3, 4]);
        let graph = fused(&b);
        // The conv's sigmoid node feeds two nodes, but the conv itself has one consumer.
        assert_eq!(graph.node(c).epilogue, Some(Activation::Sigmoid));
        assert_eq!(graph.node(bn).epilogue, Some(Activation::Relu));
        assert_eq!(graph.node(sum).epilogue, Some(Activation::Relu));
        assert_eq!(
            [r1, r2].map(|r| graph.node(r).op.clone()),
            [Op::Identity, Op::Identity]
        );
    }
}
