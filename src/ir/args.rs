//! Binding call arguments to parameters, for ops and blocks alike: positional arguments fill
//! the first parameters in order, keywords fill any. Unknown keywords, repeats and surplus
//! positional arguments are diagnostics here; which parameters are required is the caller's
//! business (an op's table or a block's defaults).

use crate::diag::{self, did_you_mean, Code, Diagnostic};
use crate::span::Span;

use super::eval::Value;

/// An evaluated argument: keyword (if any), value, span of the whole argument.
pub type EvalArg = (Option<String>, Value, Span);

/// One bound argument: its value and the span of the argument (for diagnostics).
pub type BoundArg = Option<(Value, Span)>;

/// Binds `args` to `params`, of which the first `positional` may be given by position.
/// `callee` names the op or block in messages (`` `conv` ``).
pub fn bind(
    callee: &str,
    params: &[&str],
    positional: usize,
    args: Vec<EvalArg>,
) -> diag::Result<Vec<BoundArg>> {
    let mut bound: Vec<BoundArg> = vec![None; params.len()];
    let mut next_positional = 0usize;
    for (keyword, value, span) in args {
        let slot = match keyword {
            Some(keyword) => match params.iter().position(|p| *p == keyword) {
                Some(slot) => slot,
                None => {
                    let mut d = Diagnostic::error(
                        Code::UnknownKeyword,
                        format!("{callee} has no argument `{keyword}`"),
                    )
                    .label(span, "unknown argument");
                    d = match did_you_mean(&keyword, params.iter().copied()) {
                        Some(help) => d.help(help),
                        None if params.is_empty() => d.note(format!("{callee} takes no arguments")),
                        None => d.note(format!("{callee} takes {}", quoted_list(params))),
                    };
                    return Err(vec![d]);
                }
            },
            None => {
                if next_positional >= positional {
                    let takes = match positional {
                        0 => "no positional arguments".to_string(),
                        1 => "1 positional argument".to_string(),
                        n => format!("{n} positional arguments"),
                    };
                    let mut d = Diagnostic::error(
                        Code::DuplicateArgument,
                        format!("{callee} takes {takes}"),
                    )
                    .label(span, "one argument too many");
                    if positional < params.len() {
                        d = d.help(format!(
                            "give the others by name: {}",
                            quoted_list(&params[positional..])
                        ));
                    }
                    return Err(vec![d]);
                }
                next_positional += 1;
                next_positional - 1
            }
        };
        if let Some((_, first)) = &bound[slot] {
            return Err(vec![Diagnostic::error(
                Code::DuplicateArgument,
                format!("argument `{}` of {callee} is given twice", params[slot]),
            )
            .label(span, "given again here")
            .label(*first, "first given here")]);
        }
        bound[slot] = Some((value, span));
    }
    Ok(bound)
}

/// The error for a required argument that is missing.
pub fn missing(callee: &str, param: &str, call: Span) -> Vec<Diagnostic> {
    vec![Diagnostic::error(
        Code::MissingArgument,
        format!("{callee} needs the argument `{param}`"),
    )
    .label(call, format!("`{param}` is missing"))]
}

fn quoted_list(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arg(keyword: Option<&str>, value: i64) -> EvalArg {
        (
            keyword.map(str::to_string),
            Value::Int(value),
            Span::default(),
        )
    }

    #[test]
    fn positional_then_keyword_fill_their_slots() {
        let bound = bind(
            "`conv`",
            &["channels", "kernel", "stride"],
            1,
            vec![arg(None, 6), arg(Some("kernel"), 5)],
        )
        .unwrap();
        assert_eq!(bound[0].as_ref().map(|b| &b.0), Some(&Value::Int(6)));
        assert_eq!(bound[1].as_ref().map(|b| &b.0), Some(&Value::Int(5)));
        assert!(bound[2].is_none());
    }

    #[test]
    fn mistakes_get_their_codes() {
        let params = ["channels", "kernel"];
        let code = |args| bind("`conv`", &params, 1, args).unwrap_err()[0].code;
        assert_eq!(code(vec![arg(Some("kernal"), 5)]), Code::UnknownKeyword);
        assert_eq!(
            code(vec![arg(None, 6), arg(None, 5)]),
            Code::DuplicateArgument
        );
        assert_eq!(
            code(vec![arg(Some("kernel"), 5), arg(Some("kernel"), 3)]),
            Code::DuplicateArgument
        );
    }
}
