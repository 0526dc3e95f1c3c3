//! `cnnc dump --stage ast`: the parsed file printed back as canonical `.cnn` text, one statement
//! per line, four-space indents, fully parenthesised arithmetic. Deterministic, no spans.

use std::fmt::Write;

use super::ast::*;

pub fn print_file(file: &File) -> String {
    let mut out = String::new();
    for item in &file.items {
        match item {
            Item::Use { path, .. } => {
                let _ = writeln!(out, "use \"{path}\"");
            }
            Item::Block(block) => {
                let params: Vec<String> = block
                    .params
                    .iter()
                    .map(|p| match &p.default {
                        Some(d) => format!("{}={}", p.name.name, expr(d)),
                        None => p.name.name.clone(),
                    })
                    .collect();
                let _ = writeln!(out, "block {}({}) {{", block.name.name, params.join(", "));
                body(&mut out, &block.body, 1);
                out.push_str("}\n");
            }
            Item::Network(net) => {
                let _ = writeln!(out, "network {} {{", net.name.name);
                body(&mut out, &net.body, 1);
                out.push_str("}\n");
            }
        }
    }
    out
}

fn body(out: &mut String, stmts: &[Stmt], depth: usize) {
    for stmt in stmts {
        let indent = "    ".repeat(depth);
        let label = stmt
            .label
            .as_ref()
            .map_or(String::new(), |l| format!("{}: ", l.name));
        let _ = write!(out, "{indent}{label}");
        match &stmt.kind {
            StmtKind::Let { name, value } => {
                let _ = writeln!(out, "let {} = {}", name.name, expr(value));
            }
            StmtKind::Input { dims } => {
                let _ = writeln!(out, "input [{}]", list(dims));
            }
            StmtKind::Layer { name, args: a, .. } => {
                let _ = writeln!(out, "{}({})", name.name, args(a));
            }
            StmtKind::Repeat { count, body: inner } => {
                let _ = writeln!(out, "repeat {} {{", expr(count));
                body(out, inner, depth + 1);
                let _ = writeln!(out, "{indent}}}");
            }
            StmtKind::Residual { body: inner } => {
                out.push_str("residual {\n");
                body(out, inner, depth + 1);
                let _ = writeln!(out, "{indent}}}");
            }
            StmtKind::Join { kind, branches } => {
                let _ = writeln!(out, "{} {{", kind.keyword());
                for branch in branches {
                    let label = branch
                        .label
                        .as_ref()
                        .map_or(String::new(), |l| format!("{}: ", l.name));
                    let _ = writeln!(out, "{indent}    {label}branch {{");
                    body(out, &branch.body, depth + 2);
                    let _ = writeln!(out, "{indent}    }}");
                }
                let _ = writeln!(out, "{indent}}}");
            }
            StmtKind::Train { settings } => {
                out.push_str("train {\n");
                for s in settings {
                    let _ = writeln!(out, "{indent}    {} = {}", s.key.name, expr(&s.value));
                }
                let _ = writeln!(out, "{indent}}}");
            }
        }
    }
}

fn list(items: &[Expr]) -> String {
    items.iter().map(expr).collect::<Vec<_>>().join(", ")
}

fn args(items: &[Arg]) -> String {
    items
        .iter()
        .map(|a| match &a.keyword {
            Some(k) => format!("{}={}", k.name, expr(&a.value)),
            None => expr(&a.value),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn expr(e: &Expr) -> String {
    match &e.kind {
        ExprKind::Int(digits) => digits.clone(),
        ExprKind::Float(x) => format!("{x:?}"),
        ExprKind::Bool(b) => b.to_string(),
        ExprKind::Str(s) => format!("\"{s}\""),
        ExprKind::Name(n) => n.clone(),
        ExprKind::Tuple(items) if items.len() == 1 => format!("({},)", expr(&items[0])),
        ExprKind::Tuple(items) => format!("({})", list(items)),
        ExprKind::Call { name, args: a } => format!("{}({})", name.name, args(a)),
        ExprKind::Sum { first, rest } | ExprKind::Product { first, rest } => {
            let mut s = format!("({}", expr(first));
            for (op, operand) in rest {
                let _ = write!(s, " {} {}", op.symbol(), expr(operand));
            }
            s + ")"
        }
        ExprKind::Neg(operand) => format!("-{}", expr(operand)),
        ExprKind::Index { base, indices } => {
            let mut s = expr(base);
            for i in indices {
                let _ = write!(s, "[{}]", expr(i));
            }
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::FileId;

    #[test]
    fn printed_text_parses_back_to_the_same_print() {
        let text = "block b(c, k=3) { repeat c { conv c*2+1 kernel=(k, k) } }\nnetwork n {\n input [1, 8]\n x: b(2)\n concat { branch { relu } y: branch { identity } }\n train { data = fashion-mnist; optimizer = sgd(lr=0.1) }\n}\n";
        let once = print_file(&super::super::parse(FileId(0), text).unwrap());
        let twice = print_file(&super::super::parse(FileId(0), &once).unwrap());
        assert_eq!(once, twice);
        assert!(
            once.contains("conv(((c * 2) + 1), kernel=(k, k))"),
            "{once}"
        );
    }
}
