//! No input, however malformed or deeply nested, makes the front end panic or overflow the
//! stack: random text, mutated seed models and pathological nesting all end in `Ok` (a graph
//! that verifies) or in diagnostics that render.

use proptest::prelude::*;

use cnnc::span::SourceMap;

/// Loads `text` and renders whatever comes out; panics only if cnnc does.
fn load_and_render(text: &str) {
    let mut sources = SourceMap::default();
    match cnnc::load_str("input.cnn", text, &mut sources) {
        Ok(graphs) => {
            for g in &graphs {
                assert_eq!(cnnc::ir::verify::verify(g), Ok(()));
                let _ = cnnc::ir::params::totals(g);
            }
        }
        Err(diagnostics) => {
            assert!(!diagnostics.is_empty());
            for d in &diagnostics {
                for (span, _) in &d.labels {
                    let file = &sources.file(span.file).text;
                    assert!(
                        file.is_char_boundary(span.start as usize)
                            && file.is_char_boundary(span.end as usize),
                        "{d:?}"
                    );
                }
            }
            let rendered = cnnc::cli::render::render(&sources, &diagnostics, false);
            assert!(rendered.contains("error[E"));
        }
    }
}

const SEEDS: [&str; 4] = [
    include_str!("../models/lenet.cnn"),
    include_str!("../models/googlenet.cnn"),
    include_str!("../models/resnet18.cnn"),
    include_str!("../models/seq1d.cnn"),
];

/// Pieces that, spliced into a valid program, make interesting mistakes.
const TOKENS: [&str; 28] = [
    "{",
    "}",
    "(",
    ")",
    "[",
    "]",
    ",",
    ";",
    "\n",
    "=",
    ":",
    "-",
    "*",
    "/",
    "0",
    "-1",
    "99999999999999999999",
    "4294967296",
    "conv",
    "repeat 3",
    "branch",
    "concat {",
    "residual {",
    "kernel=",
    "padding=same",
    "(1, 2, 3)",
    "\"x.cnn\"",
    "é",
];

#[derive(Clone, Debug)]
enum Mutation {
    Delete { at: usize, len: usize },
    Insert { at: usize, token: usize },
    Duplicate { at: usize, len: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1usize..40).prop_map(|(at, len)| Mutation::Delete { at, len }),
        (any::<usize>(), 0..TOKENS.len()).prop_map(|(at, token)| Mutation::Insert { at, token }),
        (any::<usize>(), 1usize..200).prop_map(|(at, len)| Mutation::Duplicate { at, len }),
    ]
}

/// Applies `m` at char boundaries of `text`.
fn apply(text: &str, m: &Mutation) -> String {
    let bounds: Vec<usize> = text
        .char_indices()
        .map(|(i, _)| i)
        .chain([text.len()])
        .collect();
    let pick = |at: usize| bounds[at % bounds.len()];
    // The first boundary at least `len` bytes after `start`.
    let end_after = |start: usize, len: usize| {
        bounds
            .iter()
            .copied()
            .find(|&b| b >= start + len)
            .unwrap_or(text.len())
    };
    match *m {
        Mutation::Delete { at, len } => {
            let start = pick(at);
            format!("{}{}", &text[..start], &text[end_after(start, len)..])
        }
        Mutation::Insert { at, token } => {
            let at = pick(at);
            format!("{} {} {}", &text[..at], TOKENS[token], &text[at..])
        }
        Mutation::Duplicate { at, len } => {
            let start = pick(at);
            format!("{}{}", &text[..end_after(start, len)], &text[start..])
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn random_text_never_panics(text in "\\PC{0,200}") {
        load_and_render(&text);
    }

    #[test]
    fn random_statements_never_panic(body in proptest::collection::vec(0..TOKENS.len(), 0..40)) {
        let stmts: Vec<&str> = body.iter().map(|&i| TOKENS[i]).collect();
        load_and_render(&format!("network n {{\n input [3, 16, 16]\n {}\n}}", stmts.join(" ")));
    }

    #[test]
    fn mutated_models_never_panic(seed in 0..SEEDS.len(), mutations in proptest::collection::vec(mutation(), 1..4)) {
        let text = mutations.iter().fold(SEEDS[seed].to_string(), |t, m| apply(&t, m));
        load_and_render(&text);
    }

    #[test]
    fn deep_nesting_never_overflows(depth in 1usize..3000, kind in 0usize..7) {
        let text = match kind {
            0 => format!("network n {{ input [1, 4]\n let x = {}1{} }}", "(".repeat(depth), ")".repeat(depth)),
            1 => format!("network n {{ input [1, 4]\n {}relu{} }}", "repeat 1 { ".repeat(depth), " }".repeat(depth)),
            2 => format!("network n {{ input [1, 4]\n {}relu{} }}", "concat { branch { ".repeat(depth), " } }".repeat(depth)),
            3 => format!("network n {{ input [1, 4]\n let x = {}1 }}", "- ".repeat(depth)),
            4 => format!("network n {{ input [1, 4]\n let x = 1{} }}", " + 1".repeat(depth)),
            5 => {
                // A chain of blocks, each calling the next.
                let blocks: String = (0..depth).map(|i| format!("block b{i}() {{ b{}() }}\n", i + 1)).collect();
                format!("{blocks}block b{depth}() {{ relu }}\nnetwork n {{ input [1, 4]\n b0() }}")
            }
            _ => format!("network n {{ input [1, 4]\n let x = (1,){} }}", "[0]".repeat(depth)),
        };
        load_and_render(&text);
    }
}

#[test]
fn the_error_corpus_and_models_survive_every_single_deletion_of_a_line() {
    for seed in SEEDS {
        let lines: Vec<&str> = seed.lines().collect();
        for skip in 0..lines.len() {
            let text: Vec<&str> = lines
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != skip)
                .map(|(_, l)| *l)
                .collect();
            load_and_render(&text.join("\n"));
        }
    }
}
