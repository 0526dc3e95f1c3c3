//! Text → [`ast::File`]. Three steps: a nesting pre-scan (so pest, which recurses once per
//! bracket, never meets unbounded depth), the pest parse, and a walk over pest's pairs that
//! builds the AST with a [`Span`] on every piece. The pre-scan and the wording of syntax errors
//! are in `parse_error.rs`.

use pest::iterators::Pair;
use pest::Parser as _;

use super::ast::*;
use super::parse_error::{check_nesting, syntax_error};
use crate::diag;
use crate::span::{FileId, Span};

#[derive(pest_derive::Parser)]
#[grammar = "../grammar/cnn.pest"]
struct CnnParser;

/// Parses one file. `file` is its id in the `SourceMap`, used for every span.
pub fn parse(file: FileId, text: &str) -> diag::Result<File> {
    check_nesting(file, text)?;
    let mut pairs =
        CnnParser::parse(Rule::file, text).map_err(|e| vec![syntax_error(file, text, &e)])?;
    let root = pairs.next().map(|p| p.into_inner());
    let walker = Walker { file };
    let items = root
        .into_iter()
        .flatten()
        .filter(|p| !matches!(p.as_rule(), Rule::EOI | Rule::sep))
        .map(|p| walker.item(p))
        .collect();
    Ok(File { items })
}

/// Parses the value of a `train` setting on its own (`cosine(min_lr=0.001)`), as a command-line
/// flag gives it; `file` is the flag's text in the `SourceMap`.
pub fn parse_setting_value(file: FileId, text: &str) -> diag::Result<Expr> {
    check_nesting(file, text)?;
    let mut pairs = CnnParser::parse(Rule::setting_value, text)
        .map_err(|e| vec![syntax_error(file, text, &e)])?;
    let value = pairs
        .next()
        .and_then(|p| p.into_inner().next())
        .expect("grammar: a setting value");
    Ok(Walker { file }.setting_value(value))
}

struct Walker {
    file: FileId,
}

impl Walker {
    fn span(&self, pair: &Pair<Rule>) -> Span {
        let s = pair.as_span();
        Span::new(self.file, s.start(), s.end())
    }

    fn ident(&self, pair: Pair<Rule>) -> Ident {
        Ident {
            name: pair.as_str().to_string(),
            span: self.span(&pair),
        }
    }

    /// A dashed name (`fashion-mnist`) or an expression.
    fn setting_value(&self, value: Pair<Rule>) -> Expr {
        match value.as_rule() {
            Rule::dashed_name => Expr {
                span: self.span(&value),
                kind: ExprKind::Name(value.as_str().to_string()),
            },
            _ => self.expr(value),
        }
    }

    fn item(&self, pair: Pair<Rule>) -> Item {
        let rule = pair.as_rule();
        let mut inner = pair
            .into_inner()
            .filter(|p| !carries_no_content(p.as_rule()));
        match rule {
            Rule::use_item => {
                let string = inner.next().expect("grammar: use has a string");
                Item::Use {
                    path: string_text(&string),
                    span: self.span(&string),
                }
            }
            Rule::block_def => {
                let name = self.ident(inner.next().expect("grammar: block has a name"));
                let mut params = Vec::new();
                let mut body = Vec::new();
                for p in inner {
                    match p.as_rule() {
                        Rule::param => {
                            let mut parts = p.into_inner();
                            let name = self.ident(parts.next().expect("grammar: param has a name"));
                            let default = parts.next().map(|e| self.expr(e));
                            params.push(BlockParam { name, default });
                        }
                        _ => body = self.body(p),
                    }
                }
                Item::Block(BlockDef { name, params, body })
            }
            _ => {
                let name = self.ident(inner.next().expect("grammar: network has a name"));
                let body = inner.next().map(|b| self.body(b)).unwrap_or_default();
                Item::Network(NetworkDef { name, body })
            }
        }
    }

    fn body(&self, pair: Pair<Rule>) -> Vec<Stmt> {
        pair.into_inner()
            .filter(|p| !carries_no_content(p.as_rule()))
            .map(|s| self.stmt(s))
            .collect()
    }

    fn stmt(&self, pair: Pair<Rule>) -> Stmt {
        let span = self.span(&pair);
        let mut label = None;
        let mut kind = None;
        for p in pair.into_inner() {
            match p.as_rule() {
                Rule::label => label = p.into_inner().next().map(|i| self.ident(i)),
                _ => kind = Some(self.stmt_kind(p)),
            }
        }
        Stmt {
            label,
            kind: kind.expect("grammar: a statement has a kind"),
            span,
        }
    }

    fn stmt_kind(&self, pair: Pair<Rule>) -> StmtKind {
        let rule = pair.as_rule();
        let mut inner = pair
            .into_inner()
            .filter(|p| !carries_no_content(p.as_rule()));
        let mut next = || inner.next().expect("grammar: statement parts");
        match rule {
            Rule::let_stmt => StmtKind::Let {
                name: self.ident(next()),
                value: self.expr(next()),
            },
            Rule::input_stmt => StmtKind::Input {
                dims: inner.map(|e| self.expr(e)).collect(),
            },
            Rule::repeat_stmt => StmtKind::Repeat {
                count: self.expr(next()),
                body: self.body(next()),
            },
            Rule::residual_stmt => StmtKind::Residual {
                body: self.body(next()),
            },
            Rule::join_stmt => {
                let kind = match next().into_inner().next().map(|k| k.as_rule()) {
                    Some(Rule::kw_add) => JoinKind::Add,
                    _ => JoinKind::Concat,
                };
                StmtKind::Join {
                    kind,
                    branches: inner.map(|b| self.branch(b)).collect(),
                }
            }
            Rule::train_stmt => StmtKind::Train {
                settings: inner
                    .map(|s| {
                        let mut parts = s.into_inner();
                        let key = self.ident(parts.next().expect("grammar: setting key"));
                        let value = parts.next().expect("grammar: setting value");
                        Setting {
                            key,
                            value: self.setting_value(value),
                        }
                    })
                    .collect(),
            },
            _ => {
                let name = self.ident(next());
                let args = next();
                StmtKind::Layer {
                    name,
                    parenthesized: args.as_rule() == Rule::call_args,
                    args: self.args(args),
                }
            }
        }
    }

    fn branch(&self, pair: Pair<Rule>) -> Branch {
        let span = self.span(&pair);
        let mut label = None;
        let mut body = Vec::new();
        for p in pair.into_inner() {
            match p.as_rule() {
                Rule::label => label = p.into_inner().next().map(|i| self.ident(i)),
                Rule::body => body = self.body(p),
                _ => {}
            }
        }
        Branch { label, body, span }
    }

    /// `call_args` or `plain_args`: a list of `arg`.
    fn args(&self, pair: Pair<Rule>) -> Vec<Arg> {
        pair.into_inner()
            .map(|arg| {
                let span = self.span(&arg);
                let mut parts: Vec<Pair<Rule>> = arg.into_inner().collect();
                let value = self.expr(parts.pop().expect("grammar: an argument has a value"));
                let keyword = parts.pop().map(|k| self.ident(k));
                Arg {
                    keyword,
                    value,
                    span,
                }
            })
            .collect()
    }

    fn expr(&self, pair: Pair<Rule>) -> Expr {
        let span = self.span(&pair);
        let rule = pair.as_rule();
        let kind = match rule {
            Rule::expr | Rule::term => {
                let mut inner = pair.into_inner();
                let first = self.expr(inner.next().expect("grammar: an operand"));
                let mut rest = Vec::new();
                while let (Some(op), Some(operand)) = (inner.next(), inner.next()) {
                    let op = match op.as_str() {
                        "+" => BinOp::Add,
                        "-" => BinOp::Sub,
                        "*" => BinOp::Mul,
                        _ => BinOp::Div,
                    };
                    rest.push((op, self.expr(operand)));
                }
                if rest.is_empty() {
                    return first;
                }
                let first = Box::new(first);
                if rule == Rule::expr {
                    ExprKind::Sum { first, rest }
                } else {
                    ExprKind::Product { first, rest }
                }
            }
            Rule::unary => {
                let mut negations = 0usize;
                let mut operand = None;
                for p in pair.into_inner() {
                    match p.as_rule() {
                        Rule::neg => negations += 1,
                        _ => operand = Some(self.expr(p)),
                    }
                }
                let operand = operand.expect("grammar: unary has an operand");
                if negations.is_multiple_of(2) {
                    return operand;
                }
                ExprKind::Neg(Box::new(operand))
            }
            Rule::postfix => {
                let mut inner = pair.into_inner();
                let base = self.expr(inner.next().expect("grammar: postfix has a base"));
                let indices: Vec<Expr> = inner
                    .filter_map(|i| i.into_inner().next())
                    .map(|e| self.expr(e))
                    .collect();
                if indices.is_empty() {
                    return base;
                }
                ExprKind::Index {
                    base: Box::new(base),
                    indices,
                }
            }
            Rule::tuple => {
                let mut items = Vec::new();
                let mut trailing_comma = false;
                for p in pair.into_inner() {
                    match p.as_rule() {
                        Rule::trailing_comma => trailing_comma = true,
                        _ => items.push(self.expr(p)),
                    }
                }
                // `(x)` groups; `(x,)` is a one-element tuple, as in Python.
                if items.len() == 1 && !trailing_comma {
                    let mut only = items.pop().expect("one item");
                    only.span = span;
                    return only;
                }
                ExprKind::Tuple(items)
            }
            Rule::call => {
                let mut inner = pair.into_inner();
                let name = self.ident(inner.next().expect("grammar: call has a name"));
                let args = self.args(inner.next().expect("grammar: call has arguments"));
                ExprKind::Call { name, args }
            }
            Rule::int => ExprKind::Int(pair.as_str().to_string()),
            // The grammar admits only digits, a dot and an exponent, which always parse.
            Rule::float => ExprKind::Float(pair.as_str().parse().unwrap_or(f64::NAN)),
            Rule::boolean => ExprKind::Bool(pair.as_str() == "true"),
            Rule::string => ExprKind::Str(string_text(&pair)),
            _ => ExprKind::Name(pair.as_str().to_string()),
        };
        Expr { kind, span }
    }
}

/// Pairs that carry no content: keywords, separators, closing braces.
fn carries_no_content(rule: Rule) -> bool {
    matches!(
        rule,
        Rule::sep
            | Rule::rbrace
            | Rule::kw_use
            | Rule::kw_block
            | Rule::kw_network
            | Rule::kw_let
            | Rule::kw_input
            | Rule::kw_repeat
            | Rule::kw_residual
            | Rule::kw_branch
            | Rule::kw_train
    )
}

/// The text between the quotes of a `string` pair.
fn string_text(pair: &Pair<Rule>) -> String {
    let s = pair.as_str();
    s.get(1..s.len().saturating_sub(1))
        .unwrap_or("")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(text: &str) -> File {
        parse(FileId(0), text).unwrap_or_else(|d| panic!("{d:?}"))
    }

    #[test]
    fn parses_layers_with_labels_and_arguments() {
        let file = parse_ok(
            "network n {\n input [1, 28, 28]\n stem: conv 6 kernel=5 padding=2; relu\n}\n",
        );
        let Item::Network(net) = &file.items[0] else {
            panic!("not a network")
        };
        assert_eq!(net.body.len(), 3);
        let StmtKind::Layer { name, args, .. } = &net.body[1].kind else {
            panic!("not a layer")
        };
        assert_eq!(name.name, "conv");
        assert_eq!(
            net.body[1].label.as_ref().map(|l| l.name.as_str()),
            Some("stem")
        );
        assert_eq!(args.len(), 3);
        assert_eq!(
            args[1].keyword.as_ref().map(|k| k.name.as_str()),
            Some("kernel")
        );
    }

    #[test]
    fn long_sums_stay_flat() {
        let sum = vec!["1"; 5000].join(" + ");
        let file = parse_ok(&format!("network n {{ let x = {sum} }}"));
        let Item::Network(net) = &file.items[0] else {
            panic!("not a network")
        };
        let StmtKind::Let { value, .. } = &net.body[0].kind else {
            panic!("not a let")
        };
        let ExprKind::Sum { rest, .. } = &value.kind else {
            panic!("not a sum")
        };
        assert_eq!(rest.len(), 4999);
    }

    #[test]
    fn single_parenthesised_value_is_not_a_tuple() {
        let file = parse_ok("network n { let a = (3); let b = (3,); let c = (3, 5) }");
        let Item::Network(net) = &file.items[0] else {
            panic!("not a network")
        };
        let kinds: Vec<_> = net
            .body
            .iter()
            .map(|s| match &s.kind {
                StmtKind::Let { value, .. } => matches!(value.kind, ExprKind::Tuple(_)),
                _ => panic!("not a let"),
            })
            .collect();
        assert_eq!(kinds, [false, true, true]);
    }
}
