//! The proof that lets a `parallel` loop run on several threads: its iterations touch disjoint
//! elements of every buffer the loop writes. Two threads writing (or one writing and one
//! reading) the same element would be a data race, so a loop without this proof runs on one
//! thread instead (correct, only slower); the loop IR's contract says lowered loops have it.
//!
//! The proof, for a loop over `v in 0..E` and a buffer it writes: every access to that buffer
//! in the body has the form `c·v + s + L` with the same `c != 0`, where `L` gathers the terms
//! whose coefficients are multiples of `P = |c|·E` and `s` (the other terms and the offset)
//! stays, over all those accesses, within a window `[m, m + |c|)`. Then `(index - m) mod P`
//! lies in `|c|·v' + [0, |c|)` (with `v' = v`, or `E - 1 - v` when `c < 0`), so an element
//! determines the iteration that touches it. This covers the batch loop of NCHW tensors
//! (`s` spans one image) and channel loops (`L` holds the batch term, a multiple of `C·H·W`).
//!
//! Padding: an access under `If` guards `InBounds(g, n)` runs only where `0 <= g < n`. When
//! `s` contains a guard's terms as a whole multiple `k·g` (the scatter of a padded pooling or
//! strided convolution's backward pass, `dx[n, c, oh·2 + kh - 1, ow·2 + kw - 1]` guarded on
//! the row and the column), that part of `s` ranges over `k·([0, n) ∩ box range of g)`, as in
//! the bounds checker (`bounds.rs`, whose term helpers this reuses), instead of its box range,
//! which reaches into the neighbouring image. Only `If` guards count: both arms of a `Select`
//! run, so its condition guards nothing. A guard on the parallel variable itself is not used
//! to narrow (the variable is not part of `s`), but it may show that an access never runs.

use super::bounds::{merged_terms, subtract_term, whole_multiple};
use crate::lower::loops::{BufId, Cond, Expr, Index, Loop, Stmt, Var};

/// `Ok` when the iterations of `lp` touch disjoint elements of each buffer they write, else
/// the buffer for which that could not be proven.
pub(crate) fn iterations_are_disjoint(lp: &Loop) -> Result<(), BufId> {
    if lp.extent <= 1 {
        return Ok(());
    }
    // The parallel variable's extent is in scope so that guards on it get their true range.
    let mut walk = Walk {
        extents: vec![(lp.var, lp.extent)],
        guards: Vec::new(),
        accesses: Vec::new(),
    };
    walk.stmts(&lp.body);
    let mut written: Vec<BufId> = walk
        .accesses
        .iter()
        .filter(|a| a.write)
        .map(|a| a.buf)
        .collect();
    written.sort();
    written.dedup();
    for buf in written {
        let accesses: Vec<&Access> = walk.accesses.iter().filter(|a| a.buf == buf).collect();
        if !disjoint_for_buffer(lp.var, lp.extent as i128, &accesses) {
            return Err(buf);
        }
    }
    Ok(())
}

fn disjoint_for_buffer(var: Var, extent: i128, accesses: &[&Access]) -> bool {
    let coeff_of = |access: &Access| {
        access
            .terms
            .iter()
            .filter(|t| t.0 == var)
            .map(|t| t.1)
            .sum::<i128>()
    };
    let c = coeff_of(accesses[0]);
    if c == 0 || accesses.iter().any(|a| coeff_of(a) != c) {
        return false;
    }
    let period = c.abs() * extent;
    let (mut lo, mut hi) = (i128::MAX, i128::MIN);
    for access in accesses {
        // s: the terms other than the parallel variable's and the multiples of the period.
        let mut rest: Vec<(Var, i128)> = Vec::new();
        for &(term_var, coeff, _) in &access.terms {
            if term_var != var && coeff % period != 0 {
                subtract_term(&mut rest, term_var, -coeff);
            }
        }
        let (mut s_lo, mut s_hi) = (access.offset, access.offset);
        for guard in access.guards.iter().rev() {
            if let Some(multiple) = whole_multiple(&rest, &guard.terms) {
                for &(term_var, coeff) in &guard.terms {
                    subtract_term(&mut rest, term_var, multiple * coeff);
                }
                let (a, b) = (multiple * guard.lo, multiple * guard.hi);
                s_lo += a.min(b);
                s_hi += a.max(b);
            }
        }
        for (term_var, coeff) in rest {
            let end = coeff * access.last_of(term_var);
            s_lo += end.min(0);
            s_hi += end.max(0);
        }
        lo = lo.min(s_lo);
        hi = hi.max(s_hi);
    }
    hi - lo < c.abs()
}

/// One load or store: `(var, coeff, last value of var)` per term (a repeated variable is fine:
/// the terms are summed), the offset, and the guards it runs under.
struct Access {
    buf: BufId,
    write: bool,
    terms: Vec<(Var, i128, i128)>,
    offset: i128,
    guards: Vec<Guard>,
}

impl Access {
    fn last_of(&self, var: Var) -> i128 {
        self.terms
            .iter()
            .find(|t| t.0 == var)
            .map_or(0, |&(_, _, last)| last)
    }
}

/// An `InBounds(g, n)` that holds where an access runs: `g`'s terms (merged) take values in
/// `[lo, hi]`, which is `[-offset, n - 1 - offset]` intersected with their box range.
struct Guard {
    terms: Vec<(Var, i128)>,
    lo: i128,
    hi: i128,
}

struct Walk {
    /// Extents of the parallel loop and the inner loops in scope.
    extents: Vec<(Var, usize)>,
    /// The `InBounds` conditions of the enclosing `If`s.
    guards: Vec<(Index, i64)>,
    accesses: Vec<Access>,
}

impl Walk {
    fn stmts(&mut self, stmts: &[Stmt]) {
        for stmt in stmts {
            match stmt {
                Stmt::Loop(inner) if inner.extent == 0 => {} // never runs: touches nothing
                Stmt::Loop(inner) => {
                    self.extents.push((inner.var, inner.extent));
                    self.stmts(&inner.body);
                    self.extents.pop();
                }
                Stmt::If(cond, body) => {
                    self.cond(cond);
                    let before = self.guards.len();
                    collect_guards(cond, &mut self.guards);
                    self.stmts(body);
                    self.guards.truncate(before);
                }
                Stmt::Store(buf, index, value) | Stmt::Accumulate(buf, index, value) => {
                    self.access(*buf, index, true);
                    self.expr(value);
                }
                Stmt::Let(_, value) => self.expr(value),
            }
        }
    }

    fn cond(&mut self, cond: &Cond) {
        match cond {
            Cond::InBounds(..) => {}
            Cond::Cmp(_, a, b) => {
                self.expr(a);
                self.expr(b);
            }
            Cond::And(a, b) => {
                self.cond(a);
                self.cond(b);
            }
        }
    }

    fn expr(&mut self, expr: &Expr) {
        match expr {
            Expr::Const(_) | Expr::Local(_) | Expr::IndexValue(_) => {}
            Expr::Load(buf, index) => self.access(*buf, index, false),
            Expr::Unary(_, a) => self.expr(a),
            Expr::Binary(_, a, b) => {
                self.expr(a);
                self.expr(b);
            }
            Expr::Fma(a, b, c) => {
                self.expr(a);
                self.expr(b);
                self.expr(c);
            }
            Expr::Select(cond, a, b) => {
                self.cond(cond);
                self.expr(a);
                self.expr(b);
            }
        }
    }

    fn last_of(&self, var: Var) -> i128 {
        self.extents
            .iter()
            .rev()
            .find(|(v, _)| *v == var)
            .map_or(0, |&(_, extent)| extent as i128 - 1)
    }

    fn access(&mut self, buf: BufId, index: &Index, write: bool) {
        let mut guards = Vec::new();
        for (guard, bound) in &self.guards {
            let terms = merged_terms(guard);
            let (box_lo, box_hi) = terms.iter().fold((0, 0), |(lo, hi), &(var, coeff)| {
                let end = coeff * self.last_of(var);
                (lo + end.min(0), hi + end.max(0))
            });
            let lo = box_lo.max(-(guard.offset as i128));
            let hi = box_hi.min(*bound as i128 - 1 - guard.offset as i128);
            if lo > hi {
                return; // the guards never all hold: the access never runs
            }
            guards.push(Guard { terms, lo, hi });
        }
        let terms = index
            .terms
            .iter()
            .map(|&(var, coeff)| (var, coeff as i128, self.last_of(var)))
            .collect();
        self.accesses.push(Access {
            buf,
            write,
            terms,
            offset: index.offset as i128,
            guards,
        });
    }
}

/// The `InBounds` conditions that hold whenever `cond` does.
fn collect_guards(cond: &Cond, guards: &mut Vec<(Index, i64)>) {
    match cond {
        Cond::InBounds(index, bound) => guards.push((index.clone(), *bound)),
        Cond::Cmp(..) => {}
        Cond::And(a, b) => {
            collect_guards(a, guards);
            collect_guards(b, guards);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_kernels::{index, load, lp};
    use super::*;

    fn parallel(body: Vec<Stmt>) -> Loop {
        let Stmt::Loop(l) = lp(0, 4, true, body) else {
            unreachable!("lp builds a loop")
        };
        l
    }

    fn copy(to: (u32, &[(u32, i64)], i64), from: (u32, &[(u32, i64)], i64)) -> Stmt {
        Stmt::Store(
            BufId(to.0),
            index(to.1, to.2),
            *load(from.0, from.1, from.2),
        )
    }

    #[test]
    fn batch_rows_and_strided_channels_are_disjoint() {
        // y[v, j] = x[j, v] for j in 0..8: rows of 8.
        let rows = parallel(vec![lp(
            1,
            8,
            false,
            vec![copy((1, &[(0, 8), (1, 1)], 0), (0, &[(1, 4), (0, 1)], 0))],
        )]);
        assert_eq!(iterations_are_disjoint(&rows), Ok(()));
        // NCHW with N = 3, C = 4 (v), H·W = 5: y[n, v, p] += x[...]: the batch term 20·n is a
        // multiple of 4·5.
        let channels = parallel(vec![lp(
            1,
            3,
            false,
            vec![lp(
                2,
                5,
                false,
                vec![Stmt::Accumulate(
                    BufId(1),
                    index(&[(1, 20), (0, 5), (2, 1)], 0),
                    Expr::Const(1.0),
                )],
            )],
        )]);
        assert_eq!(iterations_are_disjoint(&channels), Ok(()));
        // Reversed rows (c < 0) are disjoint too.
        let reversed = parallel(vec![copy((1, &[(0, -2)], 6), (1, &[(0, -2)], 7))]);
        assert_eq!(iterations_are_disjoint(&reversed), Ok(()));
    }

    /// The pooling kernels (unrolled windows and looped padded ones) split over the batch.
    #[test]
    fn pooling_kernels_are_disjoint_over_the_batch() {
        use crate::ir::{Pool, PoolKind};
        use crate::lower::builder::Tensor;
        use crate::lower::pool;
        for (kernel, stride, padding) in [(2, 2, 0), (3, 1, 0), (3, 2, 1)] {
            for kind in [PoolKind::Max, PoolKind::Avg] {
                let p = Pool {
                    kind,
                    kernel: vec![kernel; 2],
                    stride: vec![stride; 2],
                    padding: vec![padding; 2],
                };
                let side = (9 + 2 * padding - kernel) / stride + 1;
                let x = Tensor::new(BufId(0), vec![3, 2, 9, 9]);
                let y = Tensor::new(BufId(1), vec![3, 2, side, side]);
                let dy = Tensor::new(BufId(2), y.dims.clone());
                let dx = Tensor::new(BufId(3), x.dims.clone());
                for k in [
                    pool::forward("p", &p, &x, &y),
                    pool::backward("p", &p, &x, &y, &dy, &dx),
                ] {
                    let [Stmt::Loop(top)] = k.body.as_slice() else {
                        panic!("{}: one top-level loop", k.name)
                    };
                    assert!(top.parallel);
                    assert_eq!(iterations_are_disjoint(top), Ok(()), "{p:?}");
                }
            }
        }
    }

    #[test]
    fn overlapping_or_shared_writes_are_not() {
        // y[v] and y[v + 1]: iteration v writes what v + 1 also writes.
        let overlapping = parallel(vec![
            copy((1, &[(0, 1)], 0), (0, &[], 0)),
            copy((1, &[(0, 1)], 1), (0, &[], 0)),
        ]);
        assert_eq!(iterations_are_disjoint(&overlapping), Err(BufId(1)));
        // Every iteration accumulates into the same element.
        let shared = parallel(vec![Stmt::Accumulate(
            BufId(2),
            index(&[], 0),
            *load(0, &[(0, 1)], 0),
        )]);
        assert_eq!(iterations_are_disjoint(&shared), Err(BufId(2)));
        // Writes own row, reads the next row of the same buffer.
        let reads_neighbour = parallel(vec![copy((1, &[(0, 2)], 0), (1, &[(0, 2)], 2))]);
        assert_eq!(iterations_are_disjoint(&reads_neighbour), Err(BufId(1)));
    }

    /// The scatter of a padded pooling backward pass over a batch of 2 (v) one-channel 4×4
    /// images: `dx[v, 2·oh + kh - 1, 2·ow + kw - 1] += dy[v, oh, ow]` for a 2×2 output, a 3×3
    /// window, stride 2 and padding 1, under `If`s of `guards` (innermost first), or with the
    /// first guard as a `Select` around the value when `in_select`.
    fn padded_scatter(guards: &[Cond], in_select: bool) -> Loop {
        let dx = index(&[(0, 16), (1, 8), (3, 4), (2, 2), (4, 1)], -5);
        let dy = load(0, &[(0, 4), (1, 2), (2, 1)], 0);
        let mut body = match (in_select, guards.first()) {
            (true, Some(guard)) => {
                let value = Expr::Select(Box::new(guard.clone()), dy, Box::new(Expr::Const(0.0)));
                vec![Stmt::Accumulate(BufId(1), dx, value)]
            }
            _ => vec![Stmt::Accumulate(BufId(1), dx, *dy)],
        };
        for guard in guards.iter().skip(usize::from(in_select)) {
            body = vec![Stmt::If(guard.clone(), body)];
        }
        for (var, extent) in [(4, 3), (3, 3), (2, 2), (1, 2)] {
            body = vec![lp(var, extent, false, body)];
        }
        let Stmt::Loop(batch) = lp(0, 2, true, body) else {
            unreachable!("lp builds a loop")
        };
        batch
    }

    fn in_rows(bound: i64) -> Cond {
        Cond::InBounds(index(&[(1, 2), (3, 1)], -1), bound)
    }

    fn in_cols(bound: i64) -> Cond {
        Cond::InBounds(index(&[(2, 2), (4, 1)], -1), bound)
    }

    #[test]
    fn padding_guards_keep_a_scatter_inside_its_image() {
        // Guarded on both axes, with the guards in one `If` or nested ones.
        let both = Cond::And(Box::new(in_rows(4)), Box::new(in_cols(4)));
        assert_eq!(
            iterations_are_disjoint(&padded_scatter(&[both], false)),
            Ok(())
        );
        let nested = padded_scatter(&[in_cols(4), in_rows(4)], false);
        assert_eq!(iterations_are_disjoint(&nested), Ok(()));
    }

    #[test]
    fn guards_that_do_not_confine_the_scatter_are_not_enough() {
        // Unguarded, or guarded on one axis: row -1 of image 1 is the last row of image 0.
        assert_eq!(
            iterations_are_disjoint(&padded_scatter(&[], false)),
            Err(BufId(1))
        );
        let rows_only = padded_scatter(&[in_rows(4)], false);
        assert_eq!(iterations_are_disjoint(&rows_only), Err(BufId(1)));
        let cols_only = padded_scatter(&[in_cols(4)], false);
        assert_eq!(iterations_are_disjoint(&cols_only), Err(BufId(1)));
        // A guard that admits rows -1 ..= 3 (2·oh + kh in 0..5): row -1 of image 1 is row 3
        // of image 0, which image 0 writes too.
        let next_row = Cond::InBounds(index(&[(1, 2), (3, 1)], 0), 5);
        let loose = Cond::And(Box::new(next_row), Box::new(in_cols(4)));
        assert_eq!(
            iterations_are_disjoint(&padded_scatter(&[loose], false)),
            Err(BufId(1))
        );
        // The guard in a `Select` guards nothing: the scatter's store runs unconditionally.
        let both = Cond::And(Box::new(in_rows(4)), Box::new(in_cols(4)));
        let selected = padded_scatter(&[both], true);
        assert_eq!(iterations_are_disjoint(&selected), Err(BufId(1)));
    }

    #[test]
    fn a_guard_on_the_parallel_variable_is_judged_over_all_its_iterations() {
        // Iterations 2 and 3 both accumulate into y[0]: a race however the guard is read.
        let racing = parallel(vec![Stmt::If(
            Cond::InBounds(index(&[(0, 1)], -2), 2),
            vec![Stmt::Accumulate(BufId(1), index(&[], 0), Expr::Const(1.0))],
        )]);
        assert_eq!(iterations_are_disjoint(&racing), Err(BufId(1)));
        // A guard that never holds: the access never runs, so nothing is shared.
        let never = parallel(vec![Stmt::If(
            Cond::InBounds(index(&[(0, 1)], -9), 2),
            vec![Stmt::Accumulate(BufId(1), index(&[], 0), Expr::Const(1.0))],
        )]);
        assert_eq!(iterations_are_disjoint(&never), Ok(()));
    }
}
