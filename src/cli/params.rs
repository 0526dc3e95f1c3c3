//! `cnnc params FILE`: every parameter and buffer in network order, with shape and whether the
//! optimiser trains it. JSON: `[{"name", "shape", "trainable"}]` (networks concatenated).

use std::fmt::Write;

use serde::Serialize;

use super::Format;
use crate::ir::Graph;

#[derive(Serialize)]
struct ParamRow<'a> {
    name: &'a str,
    shape: &'a [usize],
    trainable: bool,
}

pub fn report(graphs: &[Graph], format: Format) -> String {
    match format {
        Format::Json => {
            let rows: Vec<ParamRow> = graphs
                .iter()
                .flat_map(|g| &g.params)
                .map(|p| ParamRow {
                    name: &p.name,
                    shape: &p.shape,
                    trainable: p.kind.trainable(),
                })
                .collect();
            serde_json::to_string_pretty(&rows).unwrap_or_default() + "\n"
        }
        Format::Text => {
            let mut out = String::new();
            for graph in graphs {
                let _ = writeln!(out, "network {}", graph.name);
                let width = graph.params.iter().map(|p| p.name.len()).max().unwrap_or(0);
                for p in &graph.params {
                    let shape = crate::ir::Shape(p.shape.clone()).to_string();
                    let kind = if p.kind.trainable() {
                        "trainable"
                    } else {
                        "buffer"
                    };
                    let _ = writeln!(out, "  {:width$}  {shape:16}  {kind}", p.name);
                }
            }
            out
        }
    }
}
