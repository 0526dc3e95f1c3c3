//! Diagnostics as data. Every stage returns `Result<_, Vec<Diagnostic>>`; nothing here prints.
//! Rendering (with miette) lives in `cli/render.rs`.
//!
//! A diagnostic has a [`Code`], one sentence, labelled spans (the first is the primary one,
//! underlined in the source line), notes (e.g. the shape that reached a layer) and an optional
//! help line (e.g. "did you mean `maxpool`?").

use crate::span::Span;

/// Every kind of mistake cnnc reports. Each code is documented once, here, and listed in the
/// README; `tests/errors/` holds at least one file per code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Code {
    /// E0001: the text does not match the grammar.
    Syntax,
    /// E0002: the file is not valid UTF-8.
    NotUtf8,
    /// E0003: a `use`d file (or the main file) cannot be read.
    FileNotFound,
    /// E0004: `use` files include each other in a cycle.
    UseCycle,
    /// E0005: an op name that no layer has.
    UnknownOp,
    /// E0006: a call of a block that is not defined.
    UnknownBlock,
    /// E0007: a name that is neither a block parameter nor a `let` constant.
    UnknownName,
    /// E0008: a keyword argument the op or block does not take.
    UnknownKeyword,
    /// E0009: a required argument is missing.
    MissingArgument,
    /// E0010: an argument is given twice (or too many positional arguments).
    DuplicateArgument,
    /// E0011: a value of the wrong type (a float where an integer is needed, ...).
    WrongType,
    /// E0012: a size that must be positive is zero or negative.
    NonPositive,
    /// E0013: the (dilated) kernel is larger than the padded input.
    KernelTooLarge,
    /// E0014: pooling padding larger than half the kernel (PyTorch's rule).
    PaddingTooLarge,
    /// E0015: channels not divisible by `groups`.
    GroupsMismatch,
    /// E0016: `dense` applied to an input with spatial axes (missing `flatten`).
    DenseOnSpatial,
    /// E0017: `concat` branches disagree in spatial size, or `add` branches in shape.
    BranchMismatch,
    /// E0018: a block calls itself, directly or through others.
    RecursiveBlock,
    /// E0019: a tuple's length does not match the number of spatial axes.
    TupleArity,
    /// E0020: a network has no `input` statement (or it is not first).
    MissingInput,
    /// E0021: an element, parameter or MAC count overflows or passes the documented limit.
    TooLarge,
    /// E0022: a definition (block, network, `let`, label) is given twice.
    DuplicateDefinition,
    /// E0023: an op that needs spatial axes got none (or a wrong rank).
    WrongRank,
    /// E0024: arithmetic error in a constant expression (division by zero, index out of range).
    BadExpression,
    /// E0025: an invalid value in the `train` section (unknown optimiser, negative lr, ...).
    BadTrainSetting,
    /// E0026: no network in the file, or `--network` names none of them.
    NoSuchNetwork,
    /// E0027: a value out of its allowed range (dropout p outside [0, 1), stride with `same`, ...).
    OutOfRange,
    /// E0028: nesting deeper than the documented limit.
    TooDeep,
}

impl Code {
    /// The stable code string shown to users, `E0001`...
    pub fn as_str(self) -> &'static str {
        use Code::*;
        match self {
            Syntax => "E0001",
            NotUtf8 => "E0002",
            FileNotFound => "E0003",
            UseCycle => "E0004",
            UnknownOp => "E0005",
            UnknownBlock => "E0006",
            UnknownName => "E0007",
            UnknownKeyword => "E0008",
            MissingArgument => "E0009",
            DuplicateArgument => "E0010",
            WrongType => "E0011",
            NonPositive => "E0012",
            KernelTooLarge => "E0013",
            PaddingTooLarge => "E0014",
            GroupsMismatch => "E0015",
            DenseOnSpatial => "E0016",
            BranchMismatch => "E0017",
            RecursiveBlock => "E0018",
            TupleArity => "E0019",
            MissingInput => "E0020",
            TooLarge => "E0021",
            DuplicateDefinition => "E0022",
            WrongRank => "E0023",
            BadExpression => "E0024",
            BadTrainSetting => "E0025",
            NoSuchNetwork => "E0026",
            OutOfRange => "E0027",
            TooDeep => "E0028",
        }
    }
}

/// One reported mistake. Build with [`Diagnostic::error`] and the chaining methods.
#[derive(Clone, Debug, PartialEq)]
pub struct Diagnostic {
    pub code: Code,
    /// One sentence, no trailing period, lower-case start (like rustc).
    pub message: String,
    /// Labelled spans; the first is primary.
    pub labels: Vec<(Span, String)>,
    pub notes: Vec<String>,
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn error(code: Code, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            code,
            message: message.into(),
            labels: Vec::new(),
            notes: Vec::new(),
            help: None,
        }
    }

    pub fn label(mut self, span: Span, text: impl Into<String>) -> Diagnostic {
        self.labels.push((span, text.into()));
        self
    }

    pub fn note(mut self, text: impl Into<String>) -> Diagnostic {
        self.notes.push(text.into());
        self
    }

    pub fn help(mut self, text: impl Into<String>) -> Diagnostic {
        self.help = Some(text.into());
        self
    }
}

/// The result type of every stage.
pub type Result<T> = std::result::Result<T, Vec<Diagnostic>>;

/// "did you mean `x`?" for the closest candidate within a small edit distance.
pub fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    let best = candidates
        .into_iter()
        .map(|c| (edit_distance(name, c), c))
        .filter(|(d, c)| *d <= (name.len().max(c.len()) / 3).max(1))
        .min_by_key(|(d, c)| (*d, *c))?;
    Some(format!("did you mean `{}`?", best.1))
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        assert_eq!(
            did_you_mean("maxpol", ["maxpool", "avgpool"]).as_deref(),
            Some("did you mean `maxpool`?")
        );
        assert_eq!(did_you_mean("zzz", ["maxpool", "conv"]), None);
    }
}
