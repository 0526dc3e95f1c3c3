//! Constant expressions: `let` values, block arguments, op arguments. Integer arithmetic is
//! checked (an overflow is a diagnostic, never a wrap or a panic); names are looked up in the
//! [`Scope`], and a name that is not bound stays a [`Value::Symbol`] so that `padding=same` or
//! `data=mnist` need no quoting. Consumers that need a number report an unbound symbol as an
//! unknown name.

use std::collections::HashMap;

use crate::diag::{self, did_you_mean, Code, Diagnostic};
use crate::span::Span;
use crate::syntax::ast::{Arg, BinOp, Expr, ExprKind};

/// A value of the constant language.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    /// A name bound to nothing: `same`, `mnist`, `cross_entropy` (or a typo).
    Symbol(String),
    Tuple(Vec<Value>),
    /// `sgd(lr=0.9)`: a name with evaluated arguments (only the `train` section takes these).
    Call {
        name: String,
        args: Vec<(Option<String>, Value, Span)>,
    },
}

impl Value {
    /// How the value is described in "expected an integer, found ...".
    pub fn describe(&self) -> String {
        match self {
            Value::Int(i) => format!("the integer {i}"),
            Value::Float(x) => format!("the number {x}"),
            Value::Bool(b) => format!("`{b}`"),
            Value::Str(s) => format!("the string \"{s}\""),
            Value::Symbol(s) => format!("the name `{s}`"),
            Value::Tuple(items) => format!("a tuple of {}", items.len()),
            Value::Call { name, .. } => format!("a call of `{name}`"),
        }
    }
}

/// Names visible at a point of expansion: block parameters and `let` constants, innermost last.
#[derive(Clone, Debug, Default)]
pub struct Scope {
    frames: Vec<HashMap<String, (Value, Span)>>,
}

impl Scope {
    /// A scope with one empty frame (a network body or a block call).
    pub fn new() -> Scope {
        Scope {
            frames: vec![HashMap::new()],
        }
    }

    pub fn push(&mut self) {
        self.frames.push(HashMap::new());
    }

    pub fn pop(&mut self) {
        self.frames.pop();
    }

    /// Binds `name` in the innermost frame; a second binding in the same frame is an error.
    pub fn bind(&mut self, name: &str, value: Value, span: Span) -> diag::Result<()> {
        let Some(frame) = self.frames.last_mut() else {
            return Ok(());
        };
        if let Some((_, first)) = frame.get(name) {
            return Err(vec![defined_twice(&format!("`{name}`"), span, *first)]);
        }
        frame.insert(name.to_string(), (value, span));
        Ok(())
    }

    fn lookup(&self, name: &str) -> Option<&Value> {
        self.frames
            .iter()
            .rev()
            .find_map(|f| f.get(name))
            .map(|(v, _)| v)
    }

    /// Every bound name, for "did you mean".
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.frames
            .iter()
            .flat_map(|f| f.keys().map(String::as_str))
    }
}

/// Evaluates `expr` in `scope`.
pub fn eval(expr: &Expr, scope: &Scope) -> diag::Result<Value> {
    match &expr.kind {
        ExprKind::Int(digits) => digits.parse::<i64>().map(Value::Int).map_err(|_| {
            vec![
                Diagnostic::error(Code::TooLarge, format!("the integer {digits} is too large"))
                    .label(expr.span, "does not fit in 64 bits"),
            ]
        }),
        ExprKind::Float(x) => Ok(Value::Float(*x)),
        ExprKind::Bool(b) => Ok(Value::Bool(*b)),
        ExprKind::Str(s) => Ok(Value::Str(s.clone())),
        ExprKind::Name(name) => Ok(scope
            .lookup(name)
            .cloned()
            .unwrap_or_else(|| Value::Symbol(name.clone()))),
        ExprKind::Tuple(items) => items
            .iter()
            .map(|e| eval(e, scope))
            .collect::<diag::Result<Vec<_>>>()
            .map(Value::Tuple),
        ExprKind::Call { name, args } => Ok(Value::Call {
            name: name.name.clone(),
            args: eval_args(args, scope)?,
        }),
        ExprKind::Sum { first, rest } | ExprKind::Product { first, rest } => {
            let mut acc = eval(first, scope)?;
            for (op, operand) in rest {
                let right = eval(operand, scope)?;
                acc = arithmetic(*op, acc, right, expr.span, operand.span, scope)?;
            }
            Ok(acc)
        }
        ExprKind::Neg(operand) => match eval(operand, scope)? {
            Value::Int(i) => i
                .checked_neg()
                .map(Value::Int)
                .ok_or_else(|| overflow(expr.span)),
            Value::Float(x) => Ok(Value::Float(-x)),
            other => Err(vec![not_a_number(&other, operand.span, scope)]),
        },
        ExprKind::Index { base, indices } => {
            let mut value = eval(base, scope)?;
            for index in indices {
                let i = expect_int(&eval(index, scope)?, index.span, scope)?;
                value = match value {
                    Value::Tuple(mut items) => {
                        let len = items.len();
                        if i < 0 || i as usize >= len {
                            return Err(vec![Diagnostic::error(
                                Code::BadExpression,
                                format!("index {i} is out of range for a tuple of {len}"),
                            )
                            .label(
                                index.span,
                                format!("valid indices are 0 to {}", len.saturating_sub(1)),
                            )]);
                        }
                        items.swap_remove(i as usize)
                    }
                    other => {
                        return Err(vec![Diagnostic::error(
                            Code::WrongType,
                            format!("only tuples can be indexed, not {}", other.describe()),
                        )
                        .label(base.span, "not a tuple")])
                    }
                };
            }
            Ok(value)
        }
    }
}

/// Evaluates call arguments, keeping keywords and spans.
pub fn eval_args(args: &[Arg], scope: &Scope) -> diag::Result<Vec<(Option<String>, Value, Span)>> {
    args.iter()
        .map(|a| {
            Ok((
                a.keyword.as_ref().map(|k| k.name.clone()),
                eval(&a.value, scope)?,
                a.span,
            ))
        })
        .collect()
}

/// `+ - * /` on two values. Integers stay integers (`/` rounds down, like Python's `//`);
/// a float on either side makes the result a float.
fn arithmetic(
    op: BinOp,
    left: Value,
    right: Value,
    whole: Span,
    right_span: Span,
    scope: &Scope,
) -> diag::Result<Value> {
    match (left, right) {
        (Value::Int(a), Value::Int(b)) => {
            let result = match op {
                BinOp::Add => a.checked_add(b),
                BinOp::Sub => a.checked_sub(b),
                BinOp::Mul => a.checked_mul(b),
                BinOp::Div if b == 0 => return Err(vec![division_by_zero(right_span)]),
                BinOp::Div => a.checked_div(b).map(|q| {
                    if a % b != 0 && (a < 0) != (b < 0) {
                        q - 1
                    } else {
                        q
                    }
                }),
            };
            result.map(Value::Int).ok_or_else(|| overflow(whole))
        }
        (left, right) => {
            let a = as_float(&left).ok_or_else(|| vec![not_a_number(&left, whole, scope)])?;
            let b =
                as_float(&right).ok_or_else(|| vec![not_a_number(&right, right_span, scope)])?;
            Ok(Value::Float(match op {
                BinOp::Add => a + b,
                BinOp::Sub => a - b,
                BinOp::Mul => a * b,
                BinOp::Div if b == 0.0 => return Err(vec![division_by_zero(right_span)]),
                BinOp::Div => a / b,
            }))
        }
    }
}

fn as_float(v: &Value) -> Option<f64> {
    match v {
        Value::Int(i) => Some(*i as f64),
        Value::Float(x) => Some(*x),
        _ => None,
    }
}

fn overflow(span: Span) -> Vec<Diagnostic> {
    vec![
        Diagnostic::error(Code::TooLarge, "integer arithmetic overflows 64 bits")
            .label(span, "this overflows"),
    ]
}

fn division_by_zero(span: Span) -> Diagnostic {
    Diagnostic::error(Code::BadExpression, "division by zero").label(span, "this is zero")
}

/// The error for a value that should be a number: an unknown name if it is an unbound symbol.
pub fn not_a_number(value: &Value, span: Span, scope: &Scope) -> Diagnostic {
    match value {
        Value::Symbol(name) => unknown_name(name, span, scope),
        other => Diagnostic::error(
            Code::WrongType,
            format!("expected a number, found {}", other.describe()),
        )
        .label(span, "not a number"),
    }
}

/// E0007 with a suggestion among the names in scope.
pub fn unknown_name(name: &str, span: Span, scope: &Scope) -> Diagnostic {
    let mut d = Diagnostic::error(Code::UnknownName, format!("unknown name `{name}`"))
        .label(span, "not a block parameter or `let` constant");
    if let Some(help) = did_you_mean(name, scope.names()) {
        d = d.help(help);
    }
    d
}

/// The value as an integer, or a diagnostic at `span`.
pub fn expect_int(value: &Value, span: Span, scope: &Scope) -> diag::Result<i64> {
    match value {
        Value::Int(i) => Ok(*i),
        Value::Symbol(name) => Err(vec![unknown_name(name, span, scope)]),
        other => Err(vec![Diagnostic::error(
            Code::WrongType,
            format!("expected an integer, found {}", other.describe()),
        )
        .label(span, "an integer is needed here")]),
    }
}

/// `what` (a `let` constant, a block, a network) is given a second time at `again`.
pub fn defined_twice(what: &str, again: Span, first: Span) -> Diagnostic {
    Diagnostic::error(
        Code::DuplicateDefinition,
        format!("{what} is defined twice"),
    )
    .label(again, "defined again here")
    .label(first, "first defined here")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::FileId;
    use crate::syntax::ast::{Item, StmtKind};

    /// Evaluates the value of `let x = <text>` in a scope with `c = (4, 6)`.
    fn value_of(text: &str) -> diag::Result<Value> {
        let file =
            crate::syntax::parse(FileId(0), &format!("network n {{ let x = {text} }}")).unwrap();
        let Item::Network(net) = &file.items[0] else {
            panic!("not a network")
        };
        let StmtKind::Let { value, .. } = &net.body[0].kind else {
            panic!("not a let")
        };
        let mut scope = Scope::new();
        scope
            .bind(
                "c",
                Value::Tuple(vec![Value::Int(4), Value::Int(6)]),
                Span::default(),
            )
            .unwrap();
        eval(value, &scope)
    }

    #[test]
    fn integer_arithmetic_follows_precedence_and_floors() {
        assert_eq!(value_of("2 + 3 * 4 - (1 + 1)"), Ok(Value::Int(12)));
        assert_eq!(value_of("7 / 2"), Ok(Value::Int(3)));
        assert_eq!(value_of("-7 / 2"), Ok(Value::Int(-4)));
        assert_eq!(value_of("c[1] * 2"), Ok(Value::Int(12)));
        assert_eq!(value_of("0.5 * 3"), Ok(Value::Float(1.5)));
    }

    #[test]
    fn arithmetic_mistakes_are_diagnostics() {
        let code = |t: &str| value_of(t).unwrap_err()[0].code;
        assert_eq!(code("1 / 0"), Code::BadExpression);
        assert_eq!(code("c[2]"), Code::BadExpression);
        assert_eq!(code("9223372036854775807 + 1"), Code::TooLarge);
        assert_eq!(code("99999999999999999999"), Code::TooLarge);
        assert_eq!(code("cc + 1"), Code::UnknownName);
        assert_eq!(
            value_of("cc + 1").unwrap_err()[0].help.as_deref(),
            Some("did you mean `c`?")
        );
    }
}
