//! `cnnc check FILE`: per network, a table of every layer (path, op, output shape, parameters,
//! multiply-adds), then totals and memory. JSON: `{"networks": [{"name", "input", "output",
//! "params", "macs", "layers": [{"path", "op", "output", "params", "macs"}]}]}`.

use std::fmt::Write;

use serde::Serialize;

use super::Format;
use crate::ir::params::{node_macs, node_params, totals};
use crate::ir::Graph;

#[derive(Serialize)]
struct Report<'a> {
    networks: Vec<NetworkRow<'a>>,
}

#[derive(Serialize)]
struct NetworkRow<'a> {
    name: &'a str,
    input: &'a [usize],
    output: &'a [usize],
    params: usize,
    macs: u64,
    layers: Vec<LayerRow<'a>>,
}

#[derive(Serialize)]
struct LayerRow<'a> {
    path: &'a str,
    op: &'static str,
    output: &'a [usize],
    params: usize,
    macs: u64,
}

fn layers(graph: &Graph) -> Vec<LayerRow<'_>> {
    graph
        .node_ids()
        .map(|id| {
            let node = graph.node(id);
            LayerRow {
                path: &node.name,
                op: node.op.name(),
                output: &node.shape.0,
                params: node_params(graph, id),
                macs: node_macs(graph, id),
            }
        })
        .collect()
}

pub fn report(graphs: &[Graph], format: Format) -> String {
    match format {
        Format::Json => {
            let networks = graphs
                .iter()
                .map(|g| {
                    let t = totals(g);
                    NetworkRow {
                        name: &g.name,
                        input: &g.input().shape.0,
                        output: &g.output_shape().0,
                        params: t.params,
                        macs: t.macs,
                        layers: layers(g),
                    }
                })
                .collect();
            serde_json::to_string_pretty(&Report { networks }).unwrap_or_default() + "\n"
        }
        Format::Text => graphs.iter().map(text).collect::<Vec<_>>().join("\n"),
    }
}

fn text(graph: &Graph) -> String {
    let rows = layers(graph);
    let shapes: Vec<String> = rows
        .iter()
        .map(|r| crate::ir::Shape(r.output.to_vec()).to_string())
        .collect();
    let path_w = rows
        .iter()
        .map(|r| r.path.len())
        .chain([5])
        .max()
        .unwrap_or(5);
    let op_w = rows
        .iter()
        .map(|r| r.op.len())
        .chain([2])
        .max()
        .unwrap_or(2);
    let shape_w = shapes.iter().map(String::len).chain([6]).max().unwrap_or(6);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "network {}: {} -> {}",
        graph.name,
        graph.input().shape,
        graph.output_shape()
    );
    let _ = writeln!(
        out,
        "  {:path_w$}  {:op_w$}  {:shape_w$}  {:>12}  {:>15}",
        "layer", "op", "output", "params", "MACs"
    );
    for (row, shape) in rows.iter().zip(&shapes) {
        let _ = writeln!(
            out,
            "  {:path_w$}  {:op_w$}  {shape:shape_w$}  {:>12}  {:>15}",
            row.path,
            row.op,
            grouped(row.params as u64),
            grouped(row.macs)
        );
    }
    let t = totals(graph);
    let _ = writeln!(
        out,
        "  parameters:       {} trainable, {} buffers",
        grouped(t.params as u64),
        grouped(t.buffers as u64)
    );
    let _ = writeln!(out, "  MACs per image:   {}", grouped(t.macs));
    let _ = writeln!(out, "  parameter memory: {}", bytes(t.param_bytes));
    let _ = writeln!(
        out,
        "  activations per image: {} inference (peak live), {} training (all kept)",
        bytes(t.inference_activation_bytes),
        bytes(t.training_activation_bytes)
    );
    out
}

/// `1234567` → `1,234,567`.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Bytes with a binary unit: `246.8 KiB`.
fn bytes(n: usize) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_grouped_and_sized() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(61706), "61,706");
        assert_eq!(grouped(1234567), "1,234,567");
        assert_eq!(bytes(1000), "1000 B");
        assert_eq!(bytes(246824), "241.0 KiB");
    }
}
