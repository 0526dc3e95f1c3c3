//! The text dump of a plan (`cnnc dump --stage loops`): its buffers, every kernel's loop nests
//! and the schedules. Deterministic: buffers and kernels in plan order, names instead of ids
//! in accesses, nothing that depends on addresses or hashing.
//!
//! ```text
//! kernel relu1.forward (vars 2, locals 0)
//!   parallel for v0 in 0..2
//!     for v1 in 0..4704
//!       relu1.value[4704*v0 + v1] = max(conv1.value[4704*v0 + v1], 0.0)
//! ```

use std::fmt::Write;

use super::loops::{BinOp, BufId, CmpOp, Cond, Expr, Index, Kernel, Stmt, UnOp};
use super::step::Plan;

/// The whole plan: buffers, kernels, schedules.
pub fn plan_text(plan: &Plan) -> String {
    let name = |b: BufId| plan.buffers[b.0 as usize].name.clone();
    let mut out = format!("buffers (batch {})\n", plan.batch);
    for (i, buffer) in plan.buffers.iter().enumerate() {
        writeln!(out, "  b{i} {} [{}]", buffer.name, buffer.len).expect("writing to a String");
    }
    for kernel in &plan.kernels {
        out.push('\n');
        out.push_str(&kernel_text(kernel, &name));
    }
    let schedule = |indices: &[usize]| {
        let names: Vec<&str> = indices
            .iter()
            .map(|&i| plan.kernels[i].name.as_str())
            .collect();
        names.join(", ")
    };
    out.push_str("\nschedules\n");
    for (label, indices) in [
        ("infer", &plan.infer[..]),
        ("train_forward", &plan.train_forward[..]),
        ("loss", &[plan.loss][..]),
        ("backward", &plan.backward[..]),
        // Not a schedule: the kernels `infer` skips while no parameter has changed.
        ("derived", &plan.derived[..]),
    ] {
        writeln!(out, "  {label}: {}", schedule(indices)).expect("writing to a String");
    }
    out
}

/// One kernel, with buffers named by `buffer_name`.
pub fn kernel_text(kernel: &Kernel, buffer_name: &dyn Fn(BufId) -> String) -> String {
    let mut out = format!(
        "kernel {} (vars {}, locals {})\n",
        kernel.name, kernel.vars, kernel.locals
    );
    let printer = Printer { buffer_name };
    for stmt in &kernel.body {
        printer.stmt(&mut out, stmt, 1);
    }
    out
}

struct Printer<'a> {
    buffer_name: &'a dyn Fn(BufId) -> String,
}

impl Printer<'_> {
    fn stmt(&self, out: &mut String, stmt: &Stmt, depth: usize) {
        let pad = "  ".repeat(depth);
        let line = match stmt {
            Stmt::Loop(l) => {
                let kind = if l.parallel { "parallel for" } else { "for" };
                format!("{kind} v{} in 0..{}", l.var.0, l.extent)
            }
            Stmt::If(cond, _) => format!("if {}", self.cond(cond)),
            Stmt::Store(b, i, e) => format!("{} = {}", self.access(*b, i), self.expr(e)),
            Stmt::Accumulate(b, i, e) => format!("{} += {}", self.access(*b, i), self.expr(e)),
            Stmt::Let(l, e) => format!("l{} = {}", l.0, self.expr(e)),
        };
        out.push_str(&pad);
        out.push_str(&line);
        out.push('\n');
        let body = match stmt {
            Stmt::Loop(l) => &l.body[..],
            Stmt::If(_, body) => &body[..],
            Stmt::Store(..) | Stmt::Accumulate(..) | Stmt::Let(..) => &[],
        };
        for inner in body {
            self.stmt(out, inner, depth + 1);
        }
    }

    fn access(&self, buf: BufId, index: &Index) -> String {
        format!("{}[{}]", (self.buffer_name)(buf), index_text(index))
    }

    fn cond(&self, cond: &Cond) -> String {
        match cond {
            Cond::InBounds(i, bound) => format!("0 <= {} < {bound}", index_text(i)),
            Cond::Cmp(op, a, b) => {
                let op = match op {
                    CmpOp::Lt => "<",
                    CmpOp::Le => "<=",
                    CmpOp::Gt => ">",
                    CmpOp::Ge => ">=",
                    CmpOp::Eq => "==",
                    CmpOp::Ne => "!=",
                };
                format!("{} {op} {}", self.expr(a), self.expr(b))
            }
            Cond::And(a, b) => format!("{} and {}", self.cond(a), self.cond(b)),
        }
    }

    /// Infix arithmetic with every nested binary operation parenthesised, so the dump needs
    /// no precedence rules to read.
    fn expr(&self, e: &Expr) -> String {
        match e {
            Expr::Const(c) => format!("{c:?}"),
            Expr::Load(b, i) => self.access(*b, i),
            Expr::Local(l) => format!("l{}", l.0),
            Expr::IndexValue(i) => format!("index({})", index_text(i)),
            Expr::Unary(op, a) => {
                let name = match op {
                    UnOp::Neg => return format!("-{}", self.operand(a)),
                    UnOp::Exp => "exp",
                    UnOp::Ln => "ln",
                    UnOp::Sqrt => "sqrt",
                    UnOp::Abs => "abs",
                };
                format!("{name}({})", self.expr(a))
            }
            Expr::Binary(op, a, b) => {
                let symbol = match op {
                    BinOp::Add => "+",
                    BinOp::Sub => "-",
                    BinOp::Mul => "*",
                    BinOp::Div => "/",
                    BinOp::Max => return format!("max({}, {})", self.expr(a), self.expr(b)),
                    BinOp::Min => return format!("min({}, {})", self.expr(a), self.expr(b)),
                };
                format!("{} {symbol} {}", self.operand(a), self.operand(b))
            }
            Expr::Fma(a, b, c) => {
                format!("fma({}, {}, {})", self.expr(a), self.expr(b), self.expr(c))
            }
            Expr::Select(cond, a, b) => format!(
                "select({}, {}, {})",
                self.cond(cond),
                self.expr(a),
                self.expr(b)
            ),
        }
    }

    fn operand(&self, e: &Expr) -> String {
        match e {
            Expr::Binary(op, ..) if !matches!(op, BinOp::Max | BinOp::Min) => {
                format!("({})", self.expr(e))
            }
            _ => self.expr(e),
        }
    }
}

/// `4704*v0 + v1 - 2`; a constant index prints as its value.
fn index_text(index: &Index) -> String {
    let mut out = String::new();
    for &(var, coeff) in &index.terms {
        let magnitude = coeff.unsigned_abs();
        let term = if magnitude == 1 {
            format!("v{}", var.0)
        } else {
            format!("{magnitude}*v{}", var.0)
        };
        match (out.is_empty(), coeff < 0) {
            (true, false) => out = term,
            (true, true) => out = format!("-{term}"),
            (false, false) => write!(out, " + {term}").expect("writing to a String"),
            (false, true) => write!(out, " - {term}").expect("writing to a String"),
        }
    }
    match (out.is_empty(), index.offset) {
        (true, offset) => offset.to_string(),
        (false, 0) => out,
        (false, offset) if offset < 0 => format!("{out} - {}", -offset),
        (false, offset) => format!("{out} + {offset}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lower::builder::{cst, ix, max, KernelBuilder, Tensor};

    #[test]
    fn relu_kernel_dump() {
        let x = Tensor::new(BufId(0), vec![2, 3]);
        let y = Tensor::new(BufId(1), vec![2, 3]);
        let mut kb = KernelBuilder::new("relu1.forward");
        let (n, e) = (kb.var(2), kb.var(3));
        let at = [ix(n), ix(e) - 1];
        let store = y.store(&at, max(x.load(&at), cst(0.0)) * cst(2.0));
        let guarded = kb.guarded(&[(ix(e) - 1, 3)], vec![store]);
        let top = kb.parallel_for(n, vec![kb.for_(e, guarded)]);
        let names = |b: BufId| ["x", "y"][b.0 as usize].to_string();
        let text = kernel_text(&kb.finish(vec![top]), &names);
        let expect = "\
kernel relu1.forward (vars 2, locals 0)
  parallel for v0 in 0..2
    for v1 in 0..3
      if 0 <= v1 - 1 < 3
        y[3*v0 + v1 - 1] = max(x[3*v0 + v1 - 1], 0.0) * 2.0
";
        assert_eq!(text, expect);
    }

    #[test]
    fn index_signs() {
        let v = |i| crate::lower::loops::Var(i);
        let index = Index {
            terms: vec![(v(0), -1), (v(1), 4)],
            offset: 3,
        };
        assert_eq!(index_text(&index), "-v0 + 4*v1 + 3");
        assert_eq!(index_text(&Index::default()), "0");
    }

    /// The whole plan of a small network, snapshotted: any change of what an op lowers to
    /// shows up in review.
    #[test]
    fn plan_dump_of_a_small_network() {
        let text = "network tiny {
            input [1, 4, 4]
            conv 2 kernel=3 padding=1
            relu
            maxpool kernel=2
            flatten
            dense 3
        }";
        let mut sources = crate::span::SourceMap::default();
        let graphs = crate::load_str("tiny.cnn", text, &mut sources).expect("tiny.cnn is valid");
        let plan = crate::lower::plan(&graphs[0], 2, crate::ir::Loss::CrossEntropy);
        insta::assert_snapshot!(plan_text(&plan));
    }
}
