//! Fixtures for the tests of the reference and of the engine (`tests/plan.rs`,
//! `tests/golden.rs`, ...): graphs built by hand with [`GraphBuilder`], the repository's
//! networks read by [`model`], and the committed PyTorch goldens of `tests/golden/` read by
//! [`golden`]. They live in the library, not in a
//! `#[cfg(test)]` module, because integration tests cannot reach those. Nothing here reads user
//! input: a fixture that does not load is a broken checkout, so the functions panic.

use std::collections::HashMap;

use ndarray::{ArrayD, IxDyn};
use safetensors::{Dtype, SafeTensors};

use crate::ir::{
    BatchNorm, Conv, Dense, Graph, Node, NodeId, Op, Param, ParamId, ParamKind, Shape,
};
use crate::span::Span;

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
            folded: false,
        });
        self.graph.output = id;
        id
    }

    /// A parameter `<node>.<suffix>` of the node about to be appended.
    pub fn param(&mut self, node: &str, kind: ParamKind, shape: &[usize]) -> ParamId {
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

/// The one network of `file` (a path from the repository's root, e.g. `models/lenet.cnn`),
/// through the whole front end.
pub fn model(file: &str) -> Graph {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    let mut graphs = crate::load_file(&path, &mut crate::span::SourceMap::default())
        .unwrap_or_else(|e| panic!("{file} does not check: {e:?}"));
    assert_eq!(graphs.len(), 1, "{file}: one network");
    graphs.remove(0)
}

/// Every tensor of `tests/golden/<name>.safetensors` (written by `scripts/golden.py`, float32).
pub fn golden(name: &str) -> HashMap<String, ArrayD<f32>> {
    let path = format!(
        "{}/tests/golden/{name}.safetensors",
        env!("CARGO_MANIFEST_DIR")
    );
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let file = SafeTensors::deserialize(&bytes).unwrap_or_else(|e| panic!("{path}: {e}"));
    file.tensors()
        .into_iter()
        .map(|(key, view)| {
            assert_eq!(view.dtype(), Dtype::F32, "{path}: {key} is not float32");
            let values = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            let tensor = ArrayD::from_shape_vec(IxDyn(view.shape()), values)
                .expect("safetensors checks sizes");
            (key, tensor)
        })
        .collect()
}
