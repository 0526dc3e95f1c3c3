//! The only place that turns [`Diagnostic`]s into text, with miette's graphical renderer:
//! `error[E0013]: ...`, the file, line and column, the source lines with the labelled spans
//! underlined, then notes and help. Colour only on a terminal and when `NO_COLOR` is unset.

use std::fmt;
use std::io::IsTerminal;

use miette::{GraphicalReportHandler, GraphicalTheme, LabeledSpan, NamedSource};

use crate::diag::Diagnostic;
use crate::span::{FileId, SourceMap};
use crate::syntax::PRELUDE_NAME;

/// Fixed so that rendered text (and the snapshots of it) does not depend on the terminal.
const WIDTH: usize = 100;

/// All diagnostics rendered, each followed by a blank line.
pub fn diagnostics(sources: &SourceMap, diagnostics: &[Diagnostic]) -> String {
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    render(sources, diagnostics, colour)
}

/// [`diagnostics`] with the colour decision made by the caller (tests render without).
pub fn render(sources: &SourceMap, diagnostics: &[Diagnostic], colour: bool) -> String {
    let theme = if colour {
        GraphicalTheme::unicode()
    } else {
        GraphicalTheme::unicode_nocolor()
    };
    let handler = GraphicalReportHandler::new_themed(theme)
        .with_width(WIDTH)
        .with_links(false);
    let mut out = String::new();
    for diagnostic in diagnostics {
        let report = Report::new(sources, diagnostic);
        if handler.render_report(&mut out, &report).is_err() {
            // miette only fails on a span outside the text; fall back to the plain message.
            out.push_str(&format!(
                "error[{}]: {}\n",
                diagnostic.code.as_str(),
                diagnostic.message
            ));
        }
        for note in &report.notes {
            out.push_str(&format!("  note: {note}\n"));
        }
        out.push('\n');
    }
    out
}

/// One diagnostic as miette sees it: the labels in the primary label's file are drawn in the
/// source; labels in other files (the prelude, a `use`d file) become notes with their position.
struct Report {
    message: String,
    help: Option<String>,
    source: Option<NamedSource<String>>,
    labels: Vec<LabeledSpan>,
    notes: Vec<String>,
}

impl Report {
    fn new(sources: &SourceMap, d: &Diagnostic) -> Report {
        // Show the user's own file when a label is in it: a mistake inside a prelude block is
        // best shown at the user's call, with the prelude line as a note.
        let known = |f: &FileId| (f.0 as usize) < sources.files.len();
        let files: Vec<FileId> = d.labels.iter().map(|(s, _)| s.file).filter(known).collect();
        let primary_file: Option<FileId> = files
            .iter()
            .copied()
            .find(|&f| sources.file(f).name != PRELUDE_NAME)
            .or(files.first().copied());
        let mut labels = Vec::new();
        let mut notes = Vec::new();
        for (span, text) in &d.labels {
            if Some(span.file) == primary_file {
                let len = (span.end.saturating_sub(span.start)) as usize;
                let label = Some(text.clone()).filter(|t| !t.is_empty());
                labels.push(if labels.is_empty() {
                    LabeledSpan::new_primary_with_span(label, (span.start as usize, len))
                } else {
                    LabeledSpan::new_with_span(label, (span.start as usize, len))
                });
            } else if (span.file.0 as usize) < sources.files.len() {
                let (line, col) = sources.line_col(span.file, span.start);
                notes.push(format!(
                    "{text} ({}:{line}:{col})",
                    sources.file(span.file).name
                ));
            }
        }
        notes.extend(d.notes.iter().cloned());
        let source = primary_file.map(|f| {
            let file = sources.file(f);
            NamedSource::new(&file.name, file.text.clone())
        });
        // The code goes in the message (`error[E0013]: ...`, as rustc) rather than on a
        // line of its own, where miette puts it.
        Report {
            message: format!("error[{}]: {}", d.code.as_str(), d.message),
            help: d.help.clone(),
            source,
            labels,
            notes,
        }
    }
}

impl fmt::Debug for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Report {}

impl miette::Diagnostic for Report {
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }
    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        self.source.as_ref().map(|s| s as &dyn miette::SourceCode)
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        Some(Box::new(self.labels.iter().cloned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diag::Code;
    use crate::span::Span;

    #[test]
    fn labels_in_other_files_become_notes_with_positions() {
        let mut sources = SourceMap::default();
        let main = sources.add("main.cnn", None, "network n {\n  relu\n}\n".into());
        let other = sources.add("lib.cnn", None, "block b() {\n  conv\n}\n".into());
        let d = Diagnostic::error(Code::MissingArgument, "`conv` needs the argument `kernel`")
            .label(Span::new(main, 14, 18), "here")
            .label(Span::new(other, 14, 18), "in this block")
            .help("add `kernel=3`");
        let text = render(&sources, &[d], false);
        assert!(
            text.contains("error[E0009]: `conv` needs the argument `kernel`"),
            "{text}"
        );
        assert!(text.contains("main.cnn:2:3"), "{text}");
        assert!(text.contains("note: in this block (lib.cnn:2:3)"), "{text}");
        assert!(text.contains("help: add `kernel=3`"), "{text}");
        assert!(!text.contains('\u{1b}'), "no colour: {text}");
    }
}
