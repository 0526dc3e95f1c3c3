//! The two ways a file fails to parse: brackets nested deeper than [`MAX_NESTING`] (found by
//! a pre-scan, before pest would recurse that deep), and pest's syntax errors, turned into one
//! diagnostic that says what was found and what could come there.

use super::parser::Rule;
use crate::diag::{self, Code, Diagnostic};
use crate::limits::MAX_NESTING;
use crate::span::{FileId, Span};

/// Rejects nesting deeper than [`MAX_NESTING`] without recursion, skipping comments and strings.
pub(super) fn check_nesting(file: FileId, text: &str) -> diag::Result<()> {
    let mut depth = 0usize;
    let mut in_comment = false;
    let mut in_string = false;
    for (at, c) in text.char_indices() {
        match c {
            '\n' => {
                in_comment = false;
                in_string = false;
            }
            _ if in_comment => {}
            '"' => in_string = !in_string,
            _ if in_string => {}
            '#' => in_comment = true,
            '(' | '[' | '{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(vec![Diagnostic::error(
                        Code::TooDeep,
                        format!("brackets are nested more than {MAX_NESTING} levels deep"),
                    )
                    .label(Span::new(file, at, at + 1), "this bracket is too deep")
                    .help("split the expression or the network into blocks")]);
                }
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Turns pest's error into one diagnostic: what was found, and what could come there.
pub(super) fn syntax_error(
    file: FileId,
    text: &str,
    error: &pest::error::Error<Rule>,
) -> Diagnostic {
    let at = match error.location {
        pest::error::InputLocation::Pos(p) => p,
        pest::error::InputLocation::Span((s, _)) => s,
    };
    let at = at.min(text.len());
    let found = found_token(&text[at..]);
    // At the end of the file, point at the last character so the label has a line to sit on.
    let (start, end) = if at == text.len() {
        (text.char_indices().last().map_or(0, |(i, _)| i), text.len())
    } else {
        (at, at + found.len().max(1))
    };
    let mut expected: Vec<&str> = match &error.variant {
        pest::error::ErrorVariant::ParsingError { positives, .. } => positives
            .iter()
            .filter_map(|r| rule_description(*r))
            .collect(),
        pest::error::ErrorVariant::CustomError { .. } => Vec::new(),
    };
    expected.sort_unstable();
    expected.dedup();
    let shown = if found.is_empty() {
        "end of file".to_string()
    } else if found == "\n" {
        "end of line".to_string()
    } else {
        format!("`{found}`")
    };
    let label = if expected.is_empty() {
        "not expected here".to_string()
    } else {
        format!("expected {}", one_of(&expected))
    };
    Diagnostic::error(Code::Syntax, format!("unexpected {shown}"))
        .label(Span::new(file, start, end), label)
}

/// The token at the start of `rest`: a word, a number, or one character.
fn found_token(rest: &str) -> &str {
    let word = rest
        .char_indices()
        .find(|(_, c)| !(c.is_alphanumeric() || *c == '_' || *c == '.'))
        .map_or(rest.len(), |(i, _)| i);
    if word > 0 {
        return &rest[..word];
    }
    rest.chars().next().map_or("", |c| &rest[..c.len_utf8()])
}

fn one_of(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => one.to_string(),
        [init @ .., last] => format!("{} or {}", init.join(", "), last),
    }
}

/// How a grammar rule is named in "expected ..." (None: not worth mentioning).
fn rule_description(rule: Rule) -> Option<&'static str> {
    Some(match rule {
        Rule::use_item | Rule::kw_use => "`use`",
        Rule::block_def | Rule::kw_block => "`block`",
        Rule::network_def | Rule::kw_network => "`network`",
        Rule::stmt | Rule::layer | Rule::let_stmt | Rule::input_stmt | Rule::repeat_stmt => {
            "a statement"
        }
        Rule::label | Rule::ident | Rule::param => "a name",
        Rule::expr | Rule::term | Rule::unary | Rule::postfix | Rule::int | Rule::float => {
            "a value"
        }
        Rule::boolean | Rule::string | Rule::tuple | Rule::call | Rule::neg => "a value",
        Rule::arg | Rule::plain_args => "an argument",
        Rule::call_args => "`(`",
        Rule::body => "`{`",
        Rule::branch | Rule::kw_branch => "`branch`",
        Rule::setting => "a setting (`key = value`)",
        Rule::add_op | Rule::mul_op => "an operator",
        Rule::index => "`[`",
        Rule::trailing_comma => "`,`",
        Rule::EOI => "end of file",
        Rule::sep => "end of statement (newline or `;`)",
        Rule::rbrace => "`}`",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use crate::diag::Code;
    use crate::span::FileId;
    use crate::syntax::parse;

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let text = format!(
            "network n {{ let x = {}1{} }}",
            "(".repeat(100_000),
            ")".repeat(100_000)
        );
        let err = parse(FileId(0), &text).unwrap_err();
        assert_eq!(err[0].code, Code::TooDeep);
    }

    #[test]
    fn syntax_error_names_the_unexpected_token() {
        let err = parse(
            FileId(0),
            "network n {\n input [1, 28, 28]\n conv 6 kernel=5 )\n}",
        )
        .unwrap_err();
        assert_eq!(err[0].code, Code::Syntax);
        assert_eq!(err[0].message, "unexpected `)`");
    }
}
