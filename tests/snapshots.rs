//! Every seed network in `models/`: the `check` table, the IR dump and the fused IR dump,
//! snapshotted, so that any change of a shape, a name, a parameter count, a MAC count or a
//! fusion shows up in review.

use std::path::Path;

use cnnc::cli::Format;
use cnnc::span::SourceMap;

fn load(path: &Path) -> Vec<cnnc::ir::Graph> {
    let mut sources = SourceMap::default();
    cnnc::load_file(path, &mut sources).unwrap_or_else(|d| {
        panic!(
            "{}: {}",
            path.display(),
            cnnc::cli::render::render(&sources, &d, false)
        )
    })
}

#[test]
fn check_table_of_every_model() {
    insta::glob!("../models", "*.cnn", |path| {
        insta::assert_snapshot!(cnnc::cli::check::report(&load(path), Format::Text));
    });
}

#[test]
fn ir_of_every_model() {
    insta::glob!("../models", "*.cnn", |path| {
        let graphs = load(path);
        for graph in &graphs {
            assert_eq!(cnnc::ir::verify::verify(graph), Ok(()));
        }
        let dump: Vec<String> = graphs.iter().map(cnnc::ir::print::print_graph).collect();
        insta::assert_snapshot!(dump.join("\n"));
    });
}

/// `dump --stage fused`: which activations each model's producers absorb. The fused graph is
/// well formed and keeps every node name and parameter of the graph as written.
#[test]
fn fused_ir_of_every_model() {
    insta::glob!("../models", "*.cnn", |path| {
        let graphs = load(path);
        let mut dump = Vec::new();
        for graph in &graphs {
            let fused = cnnc::passes::fuse(graph);
            assert_eq!(cnnc::ir::verify::verify(&fused), Ok(()));
            assert_eq!(fused.params, graph.params);
            let names = |g: &cnnc::ir::Graph| -> Vec<String> {
                g.nodes.iter().map(|n| n.name.clone()).collect()
            };
            assert_eq!(names(&fused), names(graph));
            dump.push(cnnc::ir::print::print_graph(&fused));
        }
        insta::assert_snapshot!(dump.join("\n"));
    });
}

#[test]
fn ast_dump_of_every_model_parses_back() {
    insta::glob!("../models", "*.cnn", |path| {
        let text = std::fs::read_to_string(path).unwrap();
        let once = cnnc::syntax::print::print_file(
            &cnnc::syntax::parse(Default::default(), &text).unwrap(),
        );
        let twice = cnnc::syntax::print::print_file(
            &cnnc::syntax::parse(Default::default(), &once).unwrap(),
        );
        assert_eq!(once, twice);
        // The canonical text means the same network.
        let mut sources = SourceMap::default();
        let reparsed = cnnc::load_str("canonical.cnn", &once, &mut sources).unwrap();
        let original = load(path);
        let shapes = |gs: &[cnnc::ir::Graph]| -> Vec<Vec<String>> {
            gs.iter()
                .map(|g| {
                    g.nodes
                        .iter()
                        .map(|n| format!("{} {}", n.name, n.shape))
                        .collect()
                })
                .collect()
        };
        assert_eq!(shapes(&reparsed), shapes(&original));
    });
}
