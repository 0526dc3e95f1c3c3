//! `cnnc dump --stage ir`: a stable text form of a [`Graph`] — one line per node with its
//! resolved hyper-parameters and output shape, then the parameters and the `train` settings.
//! No addresses, no hash order: the same program always prints the same text.
//!
//! The same printer shows a fused graph (`--stage fused`): a node's epilogue follows its
//! attributes (`conv(%0) channels=6 ... + sigmoid`), and an activation moved into its producer
//! prints as `identity(%1) fused into conv1`; a batchnorm folded into its convolution for
//! inference (`passes::fold`) says so after its attributes.

use std::fmt::Write;

use super::*;

pub fn print_graph(graph: &Graph) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "network {}: {} -> {}",
        graph.name,
        graph.input().shape,
        graph.output_shape()
    );
    for (i, node) in graph.nodes.iter().enumerate() {
        let inputs: Vec<String> = node.inputs.iter().map(|n| format!("%{}", n.0)).collect();
        let mut attrs = attributes(&node.op);
        if let Some(activation) = node.epilogue {
            attrs = format!("{attrs} + {}", epilogue(activation));
        }
        if let (true, [producer]) = (node.folded, node.inputs.as_slice()) {
            let conv = &graph.node(*producer).name;
            attrs = format!("{attrs}, folded into {conv} for inference");
        }
        if let (Op::Identity, [producer]) = (&node.op, node.inputs.as_slice()) {
            if graph.node(*producer).epilogue.is_some() {
                attrs = format!("fused into {}", graph.node(*producer).name);
            }
        }
        let attrs = attrs.trim_start().to_string();
        let sep = if attrs.is_empty() { "" } else { " " };
        let _ = writeln!(
            out,
            "  %{i} {} = {}({}){sep}{attrs} -> {}",
            node.name,
            node.op.name(),
            inputs.join(", "),
            node.shape
        );
    }
    let _ = writeln!(out, "  output %{}", graph.output.0);
    if !graph.params.is_empty() {
        out.push_str("params\n");
        for param in &graph.params {
            let buffer = if param.kind.trainable() {
                ""
            } else {
                " buffer"
            };
            let _ = writeln!(
                out,
                "  {} {}{buffer}",
                param.name,
                Shape(param.shape.clone())
            );
        }
    }
    if let Some(train) = &graph.train {
        let _ = write!(out, "{train}");
    }
    out
}

/// `sigmoid`, `leaky_relu(slope=0.1)`
fn epilogue(activation: Activation) -> String {
    let op = Op::Activation(activation);
    match attributes(&op) {
        attrs if attrs.is_empty() => op.name().to_string(),
        attrs => format!("{}({attrs})", op.name()),
    }
}

/// `kernel=5x5 stride=1x1 ...` for the ops that have hyper-parameters.
fn attributes(op: &Op) -> String {
    let axes = |v: &[usize]| v.iter().map(usize::to_string).collect::<Vec<_>>().join("x");
    match op {
        Op::Conv(c) => {
            let padding: Vec<String> = c
                .padding
                .iter()
                .map(|(b, a)| {
                    if b == a {
                        b.to_string()
                    } else {
                        format!("{b}+{a}")
                    }
                })
                .collect();
            format!(
                "channels={} kernel={} stride={} padding={} dilation={} groups={} bias={}",
                c.out_channels,
                axes(&c.kernel),
                axes(&c.stride),
                padding.join("x"),
                axes(&c.dilation),
                c.groups,
                c.bias.is_some()
            )
        }
        Op::Pool(p) => format!(
            "kernel={} stride={} padding={}",
            axes(&p.kernel),
            axes(&p.stride),
            axes(&p.padding)
        ),
        Op::Dense(d) => format!("units={} bias={}", d.units, d.bias.is_some()),
        Op::Activation(Activation::LeakyRelu { slope }) => format!("slope={slope}"),
        Op::Dropout { p } => format!("p={p}"),
        Op::BatchNorm(b) => format!("eps={} momentum={}", b.eps, b.momentum),
        Op::Input
        | Op::GlobalAvgPool
        | Op::Flatten
        | Op::Activation(_)
        | Op::Identity
        | Op::Concat
        | Op::Add => String::new(),
    }
}
