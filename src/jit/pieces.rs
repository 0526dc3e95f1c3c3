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
use crate::lower::loops::{visit_uses, BufId, Cond, Expr, Kernel, Local, Loop, Stmt, UnOp, Use};

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

    /// Iterations of the piece's body: a parallel loop's extent, 1 for a sequential run.
    pub(crate) fn extent(&self) -> usize {
        match self {
            Piece::Sequential(_) => 1,
            Piece::Parallel(lp) => lp.extent,
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
    visit_uses(stmts, &mut |item| match item {
        Use::Load(buf) | Use::Store(buf) | Use::Accumulate(buf) => {
            found.insert(buf);
        }
        Use::Local(_) => {}
    });
    found
}

/// The locals `stmts` reads or writes, in order.
pub(crate) fn used_locals(stmts: &[Stmt]) -> BTreeSet<Local> {
    let mut found = BTreeSet::new();
    visit_uses(stmts, &mut |item| {
        if let Use::Local(local) = item {
            found.insert(local);
        }
    });
    found
}

/// Estimated cost, in scalar operations, of running `stmts` once: what decides whether a
/// parallel piece is worth splitting over threads ([`super::Compiled::run`]). A loop costs
/// its extent times its body; an `If` its condition plus its body (as if always taken); a
/// store, accumulate or `Let` one plus its expression, where every expression node (load,
/// constant, arithmetic, `fma`, ...) costs one, and `exp` and `ln` [`TRANSCENDENTAL_COST`]
/// (their polynomials, `math.rs`). Vectorised and blocked code runs up to four of these
/// operations per instruction; the estimate ignores that, since only its order of magnitude is
/// compared with [`super::MIN_WORK_PER_PART`], which was measured against it.
pub(crate) fn work(stmts: &[Stmt]) -> u64 {
    stmts
        .iter()
        .map(|stmt| match stmt {
            Stmt::Loop(lp) => (lp.extent as u64).saturating_mul(work(&lp.body)),
            Stmt::If(cond, body) => cond_work(cond).saturating_add(work(body)),
            Stmt::Store(_, _, value) | Stmt::Accumulate(_, _, value) | Stmt::Let(_, value) => {
                1 + expr_work(value)
            }
        })
        .fold(0, u64::saturating_add)
}

/// What `exp` or `ln` costs in [`work`]: about the operations of its polynomial.
const TRANSCENDENTAL_COST: u64 = 12;

fn cond_work(cond: &Cond) -> u64 {
    match cond {
        Cond::InBounds(..) => 1,
        Cond::Cmp(_, a, b) => 1 + expr_work(a) + expr_work(b),
        Cond::And(a, b) => cond_work(a) + cond_work(b),
    }
}

fn expr_work(expr: &Expr) -> u64 {
    match expr {
        Expr::Const(_) | Expr::IndexValue(_) | Expr::Load(..) | Expr::Local(_) => 1,
        Expr::Unary(UnOp::Exp | UnOp::Ln, a) => TRANSCENDENTAL_COST + expr_work(a),
        Expr::Unary(_, a) => 1 + expr_work(a),
        Expr::Binary(_, a, b) => 1 + expr_work(a) + expr_work(b),
        Expr::Fma(a, b, c) => 1 + expr_work(a) + expr_work(b) + expr_work(c),
        Expr::Select(cond, a, b) => 1 + cond_work(cond) + expr_work(a) + expr_work(b),
    }
}
