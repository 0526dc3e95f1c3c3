//! `cnnc dump --stage ast|ir FILE`: the parsed file as canonical `.cnn`, or the expanded graph.

use std::path::Path;

use super::Stage;
use crate::diag;
use crate::span::SourceMap;

pub fn report(
    stage: Stage,
    file: &Path,
    network: Option<&str>,
    sources: &mut SourceMap,
) -> diag::Result<String> {
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
    }
}
