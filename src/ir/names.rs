//! Stable dotted names. A node is named by its label, or by its op or block name and a 1-based
//! count among the unlabelled same-named siblings of its naming scope (`conv1`, `conv2`).
//! Block calls, branches and `residual` open a naming scope (`inception1.branch2.conv1`);
//! `repeat` and `concat`/`add` do not (a `repeat` body is unrolled into its parent, and the
//! branches of a join are siblings in the join's scope).

use std::collections::HashMap;

use crate::diag::{self, Code, Diagnostic};
use crate::span::Span;
use crate::syntax::ast::Ident;

/// Names in one naming scope: the path prefix, per-name counts, names taken.
pub struct Naming {
    prefix: String,
    counts: HashMap<String, usize>,
    taken: HashMap<String, Span>,
}

impl Naming {
    pub fn root() -> Naming {
        Naming {
            prefix: String::new(),
            counts: HashMap::new(),
            taken: HashMap::new(),
        }
    }

    /// Takes `name` as is (the network input is always `input`, or its label).
    pub fn reserve(&mut self, name: &str, span: Span) {
        self.taken.insert(name.to_string(), span);
    }

    /// The scope inside the node or call named `path`.
    pub fn child(&self, path: &str) -> Naming {
        Naming {
            prefix: format!("{path}."),
            counts: HashMap::new(),
            taken: HashMap::new(),
        }
    }

    /// The full path for a new node or scope at `span`: its label, or `base` plus a count.
    pub fn claim(&mut self, label: Option<&Ident>, base: &str, span: Span) -> diag::Result<String> {
        let local = match label {
            Some(l) => l.name.clone(),
            None => {
                let count = self.counts.entry(base.to_string()).or_insert(0);
                *count += 1;
                format!("{base}{count}")
            }
        };
        let span = label.map_or(span, |l| l.span);
        if let Some(first) = self.taken.insert(local.clone(), span) {
            // The same label claimed twice from the same place in the same scope: only a
            // `repeat` body, unrolled into its parent's scope, does that.
            if label.is_some() && first == span {
                return Err(vec![Diagnostic::error(
                    Code::DuplicateDefinition,
                    format!("the label `{local}` would name a layer of every repetition of a `repeat`"),
                )
                .label(span, "inside a `repeat` that runs more than once")
                .note("a `repeat` body is unrolled into the enclosing scope, where every layer needs its own name")
                .help(format!("remove the label (unlabelled layers get numbered names such as `conv1`, `conv2`), or move the repeated statements into a `block` and repeat its call: names inside a call start with the call's own numbered name (`my_block1.{local}`, `my_block2.{local}`)"))]);
            }
            return Err(vec![Diagnostic::error(Code::DuplicateDefinition, format!("two layers are named `{}{local}`", self.prefix))
                .label(span, format!("named `{local}` here"))
                .label(first, "and here")
                .note("an unlabelled layer is named after its op and a count; labels must differ from those names and from each other")]);
        }
        Ok(format!("{}{local}", self.prefix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(name: &str) -> Ident {
        Ident {
            name: name.into(),
            span: Span::default(),
        }
    }

    #[test]
    fn counts_unlabelled_siblings_and_nests_scopes() {
        let mut root = Naming::root();
        let s = Span::default();
        assert_eq!(root.claim(None, "conv", s).unwrap(), "conv1");
        assert_eq!(root.claim(Some(&label("stem")), "conv", s).unwrap(), "stem");
        assert_eq!(root.claim(None, "conv", s).unwrap(), "conv2");
        let block = root.claim(None, "inception", s).unwrap();
        let mut inner = root.child(&block);
        assert_eq!(
            inner.claim(None, "branch", s).unwrap(),
            "inception1.branch1"
        );
        assert_eq!(
            root.claim(Some(&label("conv1")), "conv", s).unwrap_err()[0].code,
            Code::DuplicateDefinition
        );
    }

    /// A label claimed twice from one place (a `repeat` body) gets its own explanation; two
    /// different places with one label get the generic one.
    #[test]
    fn a_label_repeated_by_repeat_says_why_and_how_to_fix_it() {
        let at = |start| Span {
            start,
            end: start + 1,
            ..Span::default()
        };
        let stem = Ident {
            name: "stem".into(),
            span: at(5),
        };
        let mut root = Naming::root();
        assert_eq!(root.claim(Some(&stem), "conv", at(5)).unwrap(), "stem");
        let repeated = &root.claim(Some(&stem), "conv", at(5)).unwrap_err()[0];
        assert_eq!(repeated.code, Code::DuplicateDefinition);
        assert!(repeated.message.contains("every repetition of a `repeat`"));
        let elsewhere = Ident {
            name: "stem".into(),
            span: at(9),
        };
        let twice = &root.claim(Some(&elsewhere), "conv", at(9)).unwrap_err()[0];
        assert_eq!(twice.message, "two layers are named `stem`");
    }
}
