//! Register-blocked contraction nests: the loop shape of `lower::loops` ("Contraction nests")
//! run as blocks of `U` rows × `V` vectors of 4 lanes, each output in its own register.
//!
//! [`contraction`] recognises exactly the documented form and checks its legality; anything
//! else is `None` and is translated as before. The emission (`blocked/emit.rs`) computes, per
//! block, `init` for every output, then the reduction loops with one `fma` per output per step,
//! then the epilogue and the store. Each output's sum runs over the same terms in the same
//! order with the same `fma`s as the plain loops, so the results are bitwise those of the
//! scalar translation and of `lower::interp`; only *which* outputs are computed side by side
//! changes. That is legal because:
//! - `acc` is used nowhere but in the nest (checked over the whole piece by the caller, with
//!   [`local_uses`]), so keeping one sum per output in a register instead of one shared local
//!   is invisible;
//! - the nest writes only `out`, at `o`, which is injective over the rows and lanes (checked
//!   here), and reads `out` only in `init` at exactly `o`: no output's computation reads
//!   another output's element, so computing them in any order gives the same values;
//! - `init`, `o` and the epilogue do not depend on the reduction variables, and `a`, `b` and
//!   `init` use no local: hoisting them out of or into the reduction loops changes nothing.

use std::collections::BTreeMap;

use crate::lower::loops::{BufId, Cond, Expr, Index, Local, Loop, Stmt, Var};

mod emit;
mod eval;

/// A recognised contraction nest (see the module doc of `lower::loops`).
pub(super) struct Contraction<'a> {
    /// The rows loop, blocked by unrolling, when present.
    pub(super) rows: Option<&'a Loop>,
    /// The lanes loop, vectorised.
    pub(super) lanes: &'a Loop,
    pub(super) acc: Local,
    pub(super) init: &'a Expr,
    /// Outermost first.
    pub(super) reductions: Vec<&'a Loop>,
    pub(super) a: &'a Expr,
    pub(super) b: &'a Expr,
    pub(super) out: BufId,
    pub(super) o: &'a Index,
    pub(super) epilogue: &'a Expr,
}

/// `lp` as a contraction nest whose outermost loop is `lp` (a rows loop or a lanes loop), when
/// it has exactly the documented form and the legality conditions hold.
pub(super) fn contraction(lp: &Loop) -> Option<Contraction<'_>> {
    if let [Stmt::Loop(lanes)] = lp.body.as_slice() {
        let mut nest = lanes_form(lanes)?;
        nest.rows = Some(lp);
        return nest.is_legal().then_some(nest);
    }
    let nest = lanes_form(lp)?;
    nest.is_legal().then_some(nest)
}

/// The lanes loop and everything inside it, matched structurally; legality is checked later.
fn lanes_form(lanes: &Loop) -> Option<Contraction<'_>> {
    let [Stmt::Let(acc, init), Stmt::Loop(first), Stmt::Store(out, o, epilogue)] =
        lanes.body.as_slice()
    else {
        return None;
    };
    let mut reductions = vec![first];
    let (a, b) = loop {
        let innermost = reductions[reductions.len() - 1];
        match innermost.body.as_slice() {
            [Stmt::Loop(inner)] => reductions.push(inner),
            [Stmt::Let(target, Expr::Fma(a, b, sum))] if target == acc => {
                if **sum != Expr::Local(*acc) {
                    return None;
                }
                break (a.as_ref(), b.as_ref());
            }
            _ => return None,
        }
    };
    Some(Contraction {
        rows: None,
        lanes,
        acc: *acc,
        init,
        reductions,
        a,
        b,
        out: *out,
        o,
        epilogue,
    })
}

impl Contraction<'_> {
    pub(super) fn row_var(&self) -> Option<Var> {
        self.rows.map(|rows| rows.var)
    }

    pub(super) fn lane_var(&self) -> Var {
        self.lanes.var
    }

    pub(super) fn is_reduction(&self, var: Var) -> bool {
        self.reductions.iter().any(|r| r.var == var)
    }

    fn is_legal(&self) -> bool {
        let mut vars: Vec<Var> = self.reductions.iter().map(|r| r.var).collect();
        vars.push(self.lanes.var);
        vars.extend(self.row_var());
        let distinct = vars
            .iter()
            .all(|v| vars.iter().filter(|w| *w == v).count() == 1);
        let no_reduction = |index: &Index| index.terms.iter().all(|(v, _)| !self.is_reduction(*v));
        let out_reads_ok = |expr: &Expr, allowed: Option<&Index>| {
            !any_index(expr, &mut |buf, index| {
                buf == Some(self.out) && Some(index) != allowed
            })
        };
        let other_local = |expr: &Expr| any_local(expr, &mut |l| l != self.acc);
        distinct
            && self.lanes.extent > 0
            && !uses_local(self.init)
            && !uses_local(self.a)
            && !uses_local(self.b)
            && !other_local(self.epilogue)
            && !any_index(self.init, &mut |_, i| !no_reduction(i))
            && !any_index(self.epilogue, &mut |_, i| !no_reduction(i))
            && no_reduction(self.o)
            && out_reads_ok(self.init, Some(self.o))
            && out_reads_ok(self.a, None)
            && out_reads_ok(self.b, None)
            && out_reads_ok(self.epilogue, None)
            && self.o_is_injective()
    }

    /// Whether distinct (row, lane) pairs store to distinct elements of `out`: with
    /// coefficients sorted by size, each must step over the whole range of the smaller ones
    /// (a mixed-radix numbering), which is sufficient and covers every lowering's layout.
    fn o_is_injective(&self) -> bool {
        let coeffs = coefficients(self.o);
        let mut dims: Vec<(i64, usize)> = [Some(self.lanes), self.rows]
            .into_iter()
            .flatten()
            .filter(|lp| lp.extent > 1)
            .map(|lp| (coeffs.get(&lp.var).copied().unwrap_or(0).abs(), lp.extent))
            .collect();
        dims.sort();
        let mut span = 1i64;
        for (coeff, extent) in dims {
            if coeff < span {
                return false;
            }
            span = coeff.saturating_mul(extent as i64);
        }
        true
    }
}

/// Coefficient of each variable of `index` (summed over repeated terms, zeros dropped).
pub(super) fn coefficients(index: &Index) -> BTreeMap<Var, i64> {
    let mut coeffs = BTreeMap::new();
    for &(var, coeff) in &index.terms {
        *coeffs.entry(var).or_insert(0i64) += coeff;
    }
    coeffs.retain(|_, c| *c != 0);
    coeffs
}

/// How many times each local is assigned or read in `stmts` (indexed by `Local`).
pub(super) fn local_uses(stmts: &[Stmt], locals: u32) -> Vec<usize> {
    let mut counts = vec![0; locals as usize];
    count_stmts(stmts, &mut counts);
    counts
}

fn count_stmts(stmts: &[Stmt], counts: &mut [usize]) {
    for stmt in stmts {
        match stmt {
            Stmt::Loop(lp) => count_stmts(&lp.body, counts),
            Stmt::If(cond, body) => {
                any_cond_local(cond, &mut |l| count(l, counts));
                count_stmts(body, counts);
            }
            Stmt::Store(_, _, value) | Stmt::Accumulate(_, _, value) => {
                any_local(value, &mut |l| count(l, counts));
            }
            Stmt::Let(local, value) => {
                any_local(value, &mut |l| count(l, counts));
                count(*local, counts);
            }
        }
    }
}

/// Counts one use of `local`; `false` so that the visit goes on.
fn count(local: Local, counts: &mut [usize]) -> bool {
    counts[local.0 as usize] += 1;
    false
}

fn uses_local(expr: &Expr) -> bool {
    any_local(expr, &mut |_| true)
}

/// Whether `found` holds for some local read in `expr` (visiting every one until it does).
fn any_local(expr: &Expr, found: &mut impl FnMut(Local) -> bool) -> bool {
    match expr {
        Expr::Const(_) | Expr::Load(..) | Expr::IndexValue(_) => false,
        Expr::Local(local) => found(*local),
        Expr::Unary(_, a) => any_local(a, found),
        Expr::Binary(_, a, b) => any_local(a, found) || any_local(b, found),
        Expr::Fma(a, b, c) => any_local(a, found) || any_local(b, found) || any_local(c, found),
        Expr::Select(cond, a, b) => {
            any_cond_local(cond, found) || any_local(a, found) || any_local(b, found)
        }
    }
}

fn any_cond_local(cond: &Cond, found: &mut impl FnMut(Local) -> bool) -> bool {
    match cond {
        Cond::InBounds(..) => false,
        Cond::Cmp(_, a, b) => any_local(a, found) || any_local(b, found),
        Cond::And(a, b) => any_cond_local(a, found) || any_cond_local(b, found),
    }
}

/// Whether `found` holds for some index of `expr`: a load's `(Some(buffer), index)`, or
/// `(None, index)` for an `IndexValue` or an `InBounds` guard.
pub(super) fn any_index(
    expr: &Expr,
    found: &mut impl FnMut(Option<BufId>, &Index) -> bool,
) -> bool {
    match expr {
        Expr::Const(_) | Expr::Local(_) => false,
        Expr::Load(buf, index) => found(Some(*buf), index),
        Expr::IndexValue(index) => found(None, index),
        Expr::Unary(_, a) => any_index(a, found),
        Expr::Binary(_, a, b) => any_index(a, found) || any_index(b, found),
        Expr::Fma(a, b, c) => any_index(a, found) || any_index(b, found) || any_index(c, found),
        Expr::Select(cond, a, b) => {
            any_cond_index(cond, found) || any_index(a, found) || any_index(b, found)
        }
    }
}

pub(super) fn any_cond_index(
    cond: &Cond,
    found: &mut impl FnMut(Option<BufId>, &Index) -> bool,
) -> bool {
    match cond {
        Cond::InBounds(index, _) => found(None, index),
        Cond::Cmp(_, a, b) => any_index(a, found) || any_index(b, found),
        Cond::And(a, b) => any_cond_index(a, found) || any_cond_index(b, found),
    }
}

/// Whether `expr` differs between the lanes (or rows) of `var`: an index with a nonzero
/// coefficient on it, or the sum itself (`Local(acc)`), which is one per output.
pub(super) fn depends_on(expr: &Expr, var: Var) -> bool {
    uses_local(expr) || any_index(expr, &mut |_, index| coefficients(index).contains_key(&var))
}

pub(super) fn cond_depends_on(cond: &Cond, var: Var) -> bool {
    any_cond_local(cond, &mut |_| true)
        || any_cond_index(cond, &mut |_, index| coefficients(index).contains_key(&var))
}

#[cfg(test)]
mod bench;
#[cfg(test)]
mod tests;
