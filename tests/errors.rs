//! The error corpus: every `tests/errors/*.cnn` holds one mistake (described in its first
//! line). Each must fail to load, and its rendered diagnostics (no colour) are snapshotted.
//! To add a case, add a file.

use std::collections::BTreeSet;
use std::path::Path;

use cnnc::cli::render::render;
use cnnc::diag::{Code, Diagnostic};
use cnnc::span::SourceMap;

/// Loads `path` (relative to the crate, so rendered file names are stable) as `cnnc check` does.
fn diagnostics_of(path: &Path) -> (SourceMap, Vec<Diagnostic>) {
    let relative = path
        .strip_prefix(env!("CARGO_MANIFEST_DIR"))
        .unwrap_or(path);
    let mut sources = SourceMap::default();
    match cnnc::cli::load_networks(relative, None, &mut sources) {
        Ok(_) => panic!("{} loaded without an error", relative.display()),
        Err(diagnostics) => (sources, diagnostics),
    }
}

#[test]
fn every_error_file_is_rendered() {
    insta::glob!("errors/*.cnn", |path| {
        let (sources, diagnostics) = diagnostics_of(path);
        for d in &diagnostics {
            assert!(
                !d.message.ends_with('.'),
                "messages are one sentence without a period: {}",
                d.message
            );
        }
        insta::assert_snapshot!(render(&sources, &diagnostics, false));
    });
}

#[test]
fn every_code_has_an_error_file() {
    let mut seen = BTreeSet::new();
    for entry in
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/errors")).unwrap()
    {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "cnn") {
            seen.extend(diagnostics_of(&path).1.iter().map(|d| d.code));
        }
    }
    use Code::*;
    let all = [
        Syntax,
        NotUtf8,
        FileNotFound,
        UseCycle,
        UnknownOp,
        UnknownBlock,
        UnknownName,
        UnknownKeyword,
        MissingArgument,
        DuplicateArgument,
        WrongType,
        NonPositive,
        KernelTooLarge,
        PaddingTooLarge,
        GroupsMismatch,
        DenseOnSpatial,
        BranchMismatch,
        RecursiveBlock,
        TupleArity,
        MissingInput,
        TooLarge,
        DuplicateDefinition,
        WrongRank,
        BadExpression,
        BadTrainSetting,
        NoSuchNetwork,
        OutOfRange,
        TooDeep,
    ];
    let missing: Vec<&str> = all
        .iter()
        .filter(|c| !seen.contains(c))
        .map(|c| c.as_str())
        .collect();
    assert!(
        missing.is_empty(),
        "codes without an error file: {missing:?}"
    );
}

#[test]
fn every_diagnostic_points_into_the_source() {
    insta::glob!("errors/*.cnn", |path| {
        let (sources, diagnostics) = diagnostics_of(path);
        for d in &diagnostics {
            for (span, _) in &d.labels {
                let text = &sources.file(span.file).text;
                assert!(
                    span.start <= span.end && span.end as usize <= text.len(),
                    "{:?} outside its file",
                    span
                );
            }
        }
    });
}
