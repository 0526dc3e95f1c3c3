//! cnnc: a compiler for the `.cnn` language.
//!
//! The front end on one screen: read the file (`syntax::load`), parse it and its `use`s with the
//! prelude (`syntax::parser`), expand every network into a shape-checked graph (`ir::build`).
//!
//! Data flows one way: `syntax → ir → passes → lower → jit → runtime → cli`.
//! `span` and `diag` are leaves used by every stage; `reference` is the slow, obvious oracle
//! that sees only `ir`.

pub mod cli;
pub mod diag;
pub mod ir;
pub mod jit;
pub mod limits;
pub mod lower;
pub mod passes;
pub mod reference;
pub mod runtime;
pub mod span;
pub mod syntax;

use std::path::Path;

use span::SourceMap;

/// Loads `path` and everything it uses, and returns every network of the file, expanded and
/// checked. Diagnostics refer to files in `sources`.
pub fn load_file(path: &Path, sources: &mut SourceMap) -> diag::Result<Vec<ir::Graph>> {
    let main = syntax::load::read_source(path, sources, None)?;
    build(main, sources)
}

/// Like [`load_file`] for text in memory; `use` paths are relative to the working directory.
pub fn load_str(name: &str, text: &str, sources: &mut SourceMap) -> diag::Result<Vec<ir::Graph>> {
    let main = sources.add(name, None, text.to_string());
    build(main, sources)
}

fn build(main: span::FileId, sources: &mut SourceMap) -> diag::Result<Vec<ir::Graph>> {
    let program = syntax::load::load_program(main, sources)?;
    ir::build::build_program(&program)
}
