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
use crate::lower::loops::{visit_uses, BufId, Kernel, Local, Loop, Stmt, Use};

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
