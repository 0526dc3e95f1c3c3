//! `cnnc dump --stage ast|ir|fused|loops|clif FILE`: the parsed file as canonical `.cnn`, the
//! expanded graph, the graph after the fusion passes, the plan's loop nests, or the Cranelift
//! IR of every generated function. Loops and Cranelift IR are those of the fused graph, which
//! is what the engine runs.
//!
//! Plans are built for one batch size; the dumps use batch 1 (the engine commands compile for
//! the batch they are given, which changes only the extents of the batch loops).

use std::path::Path;

use super::engine_io::loss_of;
use super::{Failure, Stage};
use crate::ir::Graph;
use crate::lower::step::{plan, Plan};
use crate::span::SourceMap;

/// The batch size of the `loops` and `clif` dumps.
const DUMP_BATCH: usize = 1;

pub fn report(
    stage: Stage,
    file: &Path,
    network: Option<&str>,
    sources: &mut SourceMap,
) -> Result<String, Failure> {
    match stage {
        Stage::Ast => {
            let id = crate::syntax::load::read_source(file, sources, None)?;
            let text = sources.file(id).text.clone();
            Ok(crate::syntax::print::print_file(&crate::syntax::parse(
                id, &text,
            )?))
        }
        Stage::Ir => {
            let graphs = super::load_networks(file, network, sources)?;
            Ok(graphs
                .iter()
                .map(crate::ir::print::print_graph)
                .collect::<Vec<_>>()
                .join("\n"))
        }
        Stage::Fused => {
            let graphs = super::load_networks(file, network, sources)?;
            Ok(graphs
                .iter()
                .map(|g| crate::ir::print::print_graph(&crate::passes::fuse(g)))
                .collect::<Vec<_>>()
                .join("\n"))
        }
        Stage::Loops => {
            let graphs = super::load_networks(file, network, sources)?;
            Ok(graphs
                .iter()
                .map(|g| {
                    format!(
                        "{}{}",
                        header(g),
                        crate::lower::print::plan_text(&plan_of(g))
                    )
                })
                .collect::<Vec<_>>()
                .join("\n"))
        }
        Stage::Clif => {
            let graphs = super::load_networks(file, network, sources)?;
            let mut out = Vec::new();
            for graph in &graphs {
                out.push(clif(graph)?);
            }
            Ok(out.join("\n"))
        }
    }
}

/// The plan the engine would run: the fused graph's.
fn plan_of(graph: &Graph) -> Plan {
    plan(&crate::passes::fuse(graph), DUMP_BATCH, loss_of(graph))
}

fn header(graph: &Graph) -> String {
    format!(
        "; network {} at batch {DUMP_BATCH} (the engine compiles for the batch it runs)\n",
        graph.name
    )
}

/// Every kernel's Cranelift IR, in plan order.
fn clif(graph: &Graph) -> Result<String, Failure> {
    let plan = plan_of(graph);
    let lens: Vec<usize> = plan.buffers.iter().map(|b| b.len).collect();
    let mut text = header(graph);
    for kernel in &plan.kernels {
        let clif = crate::jit::clif_text(kernel, &lens)
            .map_err(|e| Failure::Runtime(format!("network `{}`: {e}", graph.name)))?;
        text.push('\n');
        text.push_str(&clif);
    }
    Ok(text)
}
