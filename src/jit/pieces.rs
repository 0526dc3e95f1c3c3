//! How a kernel is cut into separately compiled functions, and what each one uses.
//!
//! A kernel is a list of [`Piece`]s, run in order, each finished before the next starts:
//! - a maximal run of top-level statements that are not parallel loops is a `Sequential`
//!   piece, run on one thread;
//! - a top-level loop marked `parallel` is a `Parallel` piece, whose iteration range the
//!   runtime splits into disjoint parts run on several threads — if `disjoint.rs` proves its
//!   iterations touch disjoint elements; otherwise it runs in a sequential piece.
//!
//! So the order of the loop IR's top-level statements is kept however many threads run, and a
//! kernel may mix sequential set-up, several parallel loops and sequential reductions. A local
//! lives in one piece (checked by [`check_locals_stay_in_piece`]): each generated function
//! starts its locals at 0.0, which is then exactly the kernel's "locals start at 0.0 on entry".

use std::collections::BTreeSet;

use super::{disjoint, JitError};
use crate::lower::loops::{BufId, Cond, Expr, Kernel, Local, Loop, Stmt};

/// A part of a kernel compiled as one function; see the module doc.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Piece<'k> {
    Sequential(&'k [Stmt]),
    Parallel(&'k Loop),
}

impl Piece<'_> {
    pub(crate) fn stmts(&self) -> &[Stmt] {
        match self {
            Piece::Sequential(stmts) => stmts,
            Piece::Parallel(lp) => &lp.body,
        }
    }
}

/// Splits a kernel's top-level statements into pieces, in order. A parallel loop whose
/// iterations are not proven disjoint (`disjoint.rs`) stays in a sequential piece.
pub(crate) fn split_pieces(kernel: &Kernel) -> Vec<Piece<'_>> {
    let mut pieces = Vec::new();
    let mut run_start = 0;
    for (i, stmt) in kernel.body.iter().enumerate() {
        if let Stmt::Loop(lp @ Loop { parallel: true, .. }) = stmt {
            if disjoint::iterations_are_disjoint(lp).is_err() {
                continue;
            }
            if run_start < i {
                pieces.push(Piece::Sequential(&kernel.body[run_start..i]));
            }
            pieces.push(Piece::Parallel(lp));
            run_start = i + 1;
        }
    }
    if run_start < kernel.body.len() {
        pieces.push(Piece::Sequential(&kernel.body[run_start..]));
    }
    pieces
}

/// Rejects a kernel whose local is used in two pieces (its value cannot cross a piece).
pub(crate) fn check_locals_stay_in_piece(
    kernel: &Kernel,
    pieces: &[Piece],
) -> Result<(), JitError> {
    let mut owner: Vec<Option<usize>> = vec![None; kernel.locals as usize];
    for (i, piece) in pieces.iter().enumerate() {
        for local in used_locals(piece.stmts()) {
            let slot = &mut owner[local.0 as usize];
            match *slot {
                Some(first) if first != i => {
                    let what = format!(
                        "l{} is used in pieces {first} and {i}, across a parallel loop",
                        local.0
                    );
                    return Err(JitError::Malformed {
                        kernel: kernel.name.clone(),
                        what,
                    });
                }
                _ => *slot = Some(i),
            }
        }
    }
    Ok(())
}

/// The buffers `stmts` reads or writes, in order.
pub(crate) fn used_buffers(stmts: &[Stmt]) -> BTreeSet<BufId> {
    let mut found = BTreeSet::new();
    visit_stmts(stmts, &mut |item| {
        if let Item::Buffer(buf) = item {
            found.insert(buf);
        }
    });
    found
}

/// The locals `stmts` reads or writes, in order.
pub(crate) fn used_locals(stmts: &[Stmt]) -> BTreeSet<Local> {
    let mut found = BTreeSet::new();
    visit_stmts(stmts, &mut |item| {
        if let Item::Local(local) = item {
            found.insert(local);
        }
    });
    found
}

enum Item {
    Buffer(BufId),
    Local(Local),
}

fn visit_stmts(stmts: &[Stmt], visit: &mut impl FnMut(Item)) {
    for stmt in stmts {
        match stmt {
            Stmt::Loop(lp) => visit_stmts(&lp.body, visit),
            Stmt::If(cond, body) => {
                visit_cond(cond, visit);
                visit_stmts(body, visit);
            }
            Stmt::Store(buf, _, value) | Stmt::Accumulate(buf, _, value) => {
                visit(Item::Buffer(*buf));
                visit_expr(value, visit);
            }
            Stmt::Let(local, value) => {
                visit(Item::Local(*local));
                visit_expr(value, visit);
            }
        }
    }
}

fn visit_cond(cond: &Cond, visit: &mut impl FnMut(Item)) {
    match cond {
        Cond::InBounds(..) => {}
        Cond::Cmp(_, a, b) => {
            visit_expr(a, visit);
            visit_expr(b, visit);
        }
        Cond::And(a, b) => {
            visit_cond(a, visit);
            visit_cond(b, visit);
        }
    }
}

fn visit_expr(expr: &Expr, visit: &mut impl FnMut(Item)) {
    match expr {
        Expr::Const(_) | Expr::IndexValue(_) => {}
        Expr::Load(buf, _) => visit(Item::Buffer(*buf)),
        Expr::Local(local) => visit(Item::Local(*local)),
        Expr::Unary(_, a) => visit_expr(a, visit),
        Expr::Binary(_, a, b) => {
            visit_expr(a, visit);
            visit_expr(b, visit);
        }
        Expr::Fma(a, b, c) => {
            visit_expr(a, visit);
            visit_expr(b, visit);
            visit_expr(c, visit);
        }
        Expr::Select(cond, a, b) => {
            visit_cond(cond, visit);
            visit_expr(a, visit);
            visit_expr(b, visit);
        }
    }
}
