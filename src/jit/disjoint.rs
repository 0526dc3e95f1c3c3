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

use crate::lower::loops::{BufId, Cond, Expr, Index, Loop, Stmt, Var};

/// `Ok` when the iterations of `lp` touch disjoint elements of each buffer they write, else
/// the buffer for which that could not be proven.
pub(crate) fn iterations_are_disjoint(lp: &Loop) -> Result<(), BufId> {
    if lp.extent <= 1 {
        return Ok(());
    }
    let mut walk = Walk {
        extents: Vec::new(),
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
        let (mut s_lo, mut s_hi) = (access.offset, access.offset);
        for &(term_var, coeff, last) in &access.terms {
            if term_var == var || coeff % period == 0 {
                continue;
            }
            let end = coeff * last;
            s_lo += end.min(0);
            s_hi += end.max(0);
        }
        lo = lo.min(s_lo);
        hi = hi.max(s_hi);
    }
    hi - lo < c.abs()
}

/// One load or store: `(var, coeff, last value of var)` per term (a repeated variable is fine:
/// the terms are summed), and the offset.
struct Access {
    buf: BufId,
    write: bool,
    terms: Vec<(Var, i128, i128)>,
    offset: i128,
}

struct Walk {
    /// Extents of the inner loops in scope.
    extents: Vec<(Var, usize)>,
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
                    self.stmts(body);
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

    fn access(&mut self, buf: BufId, index: &Index, write: bool) {
        let last_of = |var: Var| {
            self.extents
                .iter()
                .rev()
                .find(|(v, _)| *v == var)
                .map_or(0, |&(_, extent)| extent as i128 - 1)
        };
        let terms = index
            .terms
            .iter()
            .map(|&(var, coeff)| (var, coeff as i128, last_of(var)))
            .collect();
        self.accesses.push(Access {
            buf,
            write,
            terms,
            offset: index.offset as i128,
        });
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
}
