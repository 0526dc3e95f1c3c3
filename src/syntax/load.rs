//! Reading a file and everything it `use`s: decoding, parsing, resolving paths relative to the
//! using file, loading each file once, and reporting cycles and missing files at the `use`.

use std::path::{Path, PathBuf};

use super::ast::{File, Item};
use super::{parse, PRELUDE, PRELUDE_NAME};
use crate::diag::{self, Code, Diagnostic};
use crate::limits::MAX_NESTING;
use crate::span::{FileId, SourceMap, Span};

/// The prelude, the `use`d files (each once, dependencies first) and the main file, parsed.
pub struct Program {
    pub prelude: File,
    pub used: Vec<File>,
    pub main: File,
}

/// Reads `path` into `sources` (as text; invalid UTF-8 is reported at its first bad byte).
pub fn read_source(
    path: &Path,
    sources: &mut SourceMap,
    used_at: Option<Span>,
) -> diag::Result<FileId> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| {
        let d = Diagnostic::error(Code::FileNotFound, format!("cannot read `{name}`"))
            .note(e.to_string());
        vec![match used_at {
            Some(span) => d.label(span, "used here"),
            None => d,
        }]
    })?;
    match String::from_utf8(bytes) {
        Ok(text) => Ok(sources.add(name, Some(path.to_path_buf()), text)),
        Err(e) => {
            let at = e.utf8_error().valid_up_to();
            let text = String::from_utf8_lossy(e.as_bytes()).into_owned();
            // The bad bytes became U+FFFD in `text`; underline that whole character.
            let width = text[at..].chars().next().map_or(0, char::len_utf8);
            let file = sources.add(name.clone(), Some(path.to_path_buf()), text);
            Err(vec![Diagnostic::error(
                Code::NotUtf8,
                format!("`{name}` is not valid UTF-8"),
            )
            .label(Span::new(file, at, at + width), "this byte is not UTF-8")
            .help("save the file as UTF-8")])
        }
    }
}

/// Parses the prelude, the main file `main` (already in `sources`) and its `use`s.
pub fn load_program(main: FileId, sources: &mut SourceMap) -> diag::Result<Program> {
    let prelude_id = sources.add(PRELUDE_NAME, None, PRELUDE.to_string());
    let prelude = parse(prelude_id, PRELUDE)?;
    let main_text = sources.file(main).text.clone();
    let main_file = parse(main, &main_text)?;
    let mut loader = Loader {
        used: Vec::new(),
        loaded: Vec::new(),
        stack: vec![canonical(sources, main)],
    };
    loader.uses(&main_file, main, sources)?;
    Ok(Program {
        prelude,
        used: loader.used,
        main: main_file,
    })
}

struct Loader {
    used: Vec<File>,
    /// Canonical paths of files already loaded.
    loaded: Vec<PathBuf>,
    /// Canonical paths of the files being loaded, outermost first.
    stack: Vec<Option<PathBuf>>,
}

impl Loader {
    fn uses(&mut self, file: &File, id: FileId, sources: &mut SourceMap) -> diag::Result<()> {
        let base = sources
            .file(id)
            .path
            .as_ref()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_default();
        for item in &file.items {
            let Item::Use { path, span } = item else {
                continue;
            };
            let target = base.join(path);
            let key = std::fs::canonicalize(&target).ok();
            if let Some(key) = &key {
                if self.stack.iter().any(|s| s.as_ref() == Some(key)) {
                    return Err(vec![Diagnostic::error(
                        Code::UseCycle,
                        format!("`{path}` is already being loaded: the `use` lines form a cycle"),
                    )
                    .label(*span, "this `use` closes the cycle")]);
                }
                if self.loaded.contains(key) {
                    continue;
                }
            }
            if self.stack.len() > MAX_NESTING {
                return Err(vec![Diagnostic::error(
                    Code::TooDeep,
                    format!("`use` is nested more than {MAX_NESTING} files deep"),
                )
                .label(*span, "too deep")]);
            }
            let used_id = read_source(&target, sources, Some(*span))?;
            let text = sources.file(used_id).text.clone();
            let parsed = parse(used_id, &text)?;
            self.stack.push(key.clone());
            self.uses(&parsed, used_id, sources)?;
            self.stack.pop();
            if let Some(key) = key {
                self.loaded.push(key);
            }
            self.used.push(parsed);
        }
        Ok(())
    }
}

fn canonical(sources: &SourceMap, id: FileId) -> Option<PathBuf> {
    sources
        .file(id)
        .path
        .as_ref()
        .and_then(|p| std::fs::canonicalize(p).ok())
}
