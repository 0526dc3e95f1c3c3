//! What a well-formed [`Graph`] is, checked from scratch: node 0 is the only `Input`, inputs
//! point backwards, every shape is what `shape::infer` gives, parameters belong to existing
//! nodes and have the layouts their ops imply. Passes run it after they rewrite a graph.

use super::shape::infer;
use super::{Graph, Op, ParamId};

/// The first violated invariant, described.
pub fn verify(graph: &Graph) -> Result<(), String> {
    match graph.nodes.first() {
        Some(n) if n.op == Op::Input && n.inputs.is_empty() => {}
        _ => return Err("node 0 is not the input".into()),
    }
    if graph.output.0 as usize >= graph.nodes.len() {
        return Err(format!("the output {} is not a node", graph.output.0));
    }
    for (i, node) in graph.nodes.iter().enumerate().skip(1) {
        if node.op == Op::Input {
            return Err(format!("node {i} (`{}`) is a second input", node.name));
        }
        if let Some(bad) = node.inputs.iter().find(|input| input.0 as usize >= i) {
            return Err(format!(
                "node {i} (`{}`) reads node {}, which does not come before it",
                node.name, bad.0
            ));
        }
        let inputs: Vec<_> = node.inputs.iter().map(|&j| &graph.node(j).shape).collect();
        match infer(&node.op, &inputs) {
            Ok(shape) if shape == node.shape => {}
            Ok(shape) => {
                return Err(format!(
                    "node {i} (`{}`) has shape {} but its op gives {shape}",
                    node.name, node.shape
                ))
            }
            Err(e) => return Err(format!("node {i} (`{}`): {e:?}", node.name)),
        }
        for id in owned_params(&node.op) {
            match graph.params.get(id.0 as usize) {
                Some(p) if p.node.0 as usize == i => {}
                _ => {
                    return Err(format!(
                        "node {i} (`{}`) refers to parameter {} that it does not own",
                        node.name, id.0
                    ))
                }
            }
        }
    }
    Ok(())
}

fn owned_params(op: &Op) -> Vec<ParamId> {
    match op {
        Op::Conv(c) => [Some(c.weight), c.bias].into_iter().flatten().collect(),
        Op::Dense(d) => [Some(d.weight), d.bias].into_iter().flatten().collect(),
        Op::BatchNorm(b) => vec![b.weight, b.bias, b.running_mean, b.running_var],
        Op::Input
        | Op::Pool(_)
        | Op::GlobalAvgPool
        | Op::Flatten
        | Op::Activation(_)
        | Op::Dropout { .. }
        | Op::Identity
        | Op::Concat
        | Op::Add => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::SourceMap;

    const NET: &str = "network n {\n input [1, 8, 8]\n conv 4 kernel=3\n batchnorm\n relu\n flatten\n dense 10\n}";

    #[test]
    fn built_graphs_verify() {
        let graphs = crate::load_str("n.cnn", NET, &mut SourceMap::default()).unwrap();
        assert_eq!(verify(&graphs[0]), Ok(()));
    }

    #[test]
    fn a_wrong_shape_is_caught() {
        let mut graph = crate::load_str("n.cnn", NET, &mut SourceMap::default())
            .unwrap()
            .remove(0);
        graph.nodes[1].shape.0[1] = 7;
        assert!(verify(&graph).unwrap_err().contains("has shape [4, 7, 6]"));
    }
}
