//! The checks that make the generated code's unchecked loads and stores safe.
//!
//! Generated code never checks an index: every access must be proven in bounds here, at compile
//! time, from the loop extents (and from the `InBounds` guards of enclosing `If`s). Alongside,
//! the kernel must be well formed: loop variables used only inside their loop, no loop
//! re-binding a variable already in scope, locals and variables within the kernel's declared
//! counts, buffers within the table.
//!
//! An index's range is found by interval arithmetic over the loop box. A guard `InBounds(g, n)`
//! tightens it when the index contains the guard's terms as a whole multiple `m·g` (the padding
//! pattern `((c·H + ih)·W + iw)` guarded on `ih` and `iw`): that part then ranges over
//! `m·([0, n) ∩ box range of g)` instead of its box range. Other guards are ignored, which is
//! conservative (a sound access may be rejected, never the reverse). `Select` arms and the
//! operands of `And`/`Cmp` are all evaluated, so they are never guarded by their siblings.

use super::JitError;
use crate::lower::loops::{BufId, Cond, Expr, Index, Kernel, Local, Stmt, Var};

/// Checks every access and name of `kernel` against a table of buffers of `buffer_lens`.
pub(crate) fn check_kernel(kernel: &Kernel, buffer_lens: &[usize]) -> Result<(), JitError> {
    let mut scope = Scope {
        kernel,
        buffer_lens,
        extents: vec![None; kernel.vars as usize],
        guards: Vec::new(),
        unreachable: 0,
    };
    scope.check_stmts(&kernel.body)
}

/// What is known at one point of the kernel: the extent of each loop variable in scope and the
/// `InBounds` guards that hold.
struct Scope<'k> {
    kernel: &'k Kernel,
    buffer_lens: &'k [usize],
    extents: Vec<Option<usize>>,
    guards: Vec<(&'k Index, i64)>,
    /// How many enclosing loops have extent 0 (then nothing here runs).
    unreachable: usize,
}

impl<'k> Scope<'k> {
    fn check_stmts(&mut self, stmts: &'k [Stmt]) -> Result<(), JitError> {
        stmts.iter().try_for_each(|stmt| self.check_stmt(stmt))
    }

    fn check_stmt(&mut self, stmt: &'k Stmt) -> Result<(), JitError> {
        match stmt {
            Stmt::Loop(lp) => {
                let slot = self.var_slot(lp.var)?;
                if self.extents[slot].is_some() {
                    return Err(
                        self.malformed(format!("loop re-binds v{} inside its own loop", lp.var.0))
                    );
                }
                // A body that never runs has no index ranges to check, but its names must exist
                // (a kernel is rejected for a typo whatever its extents).
                self.unreachable += usize::from(lp.extent == 0);
                self.extents[slot] = Some(lp.extent);
                let result = self.check_stmts(&lp.body);
                self.extents[slot] = None;
                self.unreachable -= usize::from(lp.extent == 0);
                result
            }
            Stmt::If(cond, body) => {
                self.check_cond(cond)?;
                let before = self.guards.len();
                collect_guards(cond, &mut self.guards);
                let result = self.check_stmts(body);
                self.guards.truncate(before);
                result
            }
            Stmt::Store(buf, index, value) | Stmt::Accumulate(buf, index, value) => {
                self.check_access(*buf, index)?;
                self.check_expr(value)
            }
            Stmt::Let(local, value) => {
                self.check_local(*local)?;
                self.check_expr(value)
            }
        }
    }

    fn check_cond(&self, cond: &Cond) -> Result<(), JitError> {
        match cond {
            Cond::InBounds(index, _) => self.check_index_vars(index),
            Cond::Cmp(_, a, b) => {
                self.check_expr(a)?;
                self.check_expr(b)
            }
            Cond::And(a, b) => {
                self.check_cond(a)?;
                self.check_cond(b)
            }
        }
    }

    fn check_expr(&self, expr: &Expr) -> Result<(), JitError> {
        match expr {
            Expr::Const(_) => Ok(()),
            Expr::Load(buf, index) => self.check_access(*buf, index),
            Expr::Local(local) => self.check_local(*local),
            Expr::IndexValue(index) => self.check_index_vars(index),
            Expr::Unary(_, a) => self.check_expr(a),
            Expr::Binary(_, a, b) => {
                self.check_expr(a)?;
                self.check_expr(b)
            }
            Expr::Fma(a, b, c) => {
                self.check_expr(a)?;
                self.check_expr(b)?;
                self.check_expr(c)
            }
            Expr::Select(cond, a, b) => {
                self.check_cond(cond)?;
                self.check_expr(a)?;
                self.check_expr(b)
            }
        }
    }

    fn check_access(&self, buf: BufId, index: &Index) -> Result<(), JitError> {
        let len = *self
            .buffer_lens
            .get(buf.0 as usize)
            .ok_or_else(|| JitError::UnknownBuffer {
                kernel: self.kernel.name.clone(),
                buffer: buf.0,
                table_len: self.buffer_lens.len(),
            })?;
        self.check_index_vars(index)?;
        if self.unreachable > 0 {
            return Ok(());
        }
        let Some((lo, hi)) = self.index_range(index) else {
            return Ok(()); // the guards can never all hold: the access cannot run
        };
        if lo < 0 || hi >= len as i128 {
            return Err(JitError::OutOfBounds {
                kernel: self.kernel.name.clone(),
                buffer: buf.0,
                len,
                min_index: lo,
                max_index: hi,
            });
        }
        Ok(())
    }

    fn check_index_vars(&self, index: &Index) -> Result<(), JitError> {
        for &(var, _) in &index.terms {
            let slot = self.var_slot(var)?;
            if self.extents[slot].is_none() {
                return Err(self.malformed(format!("v{} is used outside its loop", var.0)));
            }
        }
        Ok(())
    }

    fn check_local(&self, local: Local) -> Result<(), JitError> {
        if local.0 >= self.kernel.locals {
            return Err(self.malformed(format!(
                "l{} but the kernel declares {} locals",
                local.0, self.kernel.locals
            )));
        }
        Ok(())
    }

    fn var_slot(&self, var: Var) -> Result<usize, JitError> {
        if var.0 >= self.kernel.vars {
            return Err(self.malformed(format!(
                "v{} but the kernel declares {} variables",
                var.0, self.kernel.vars
            )));
        }
        Ok(var.0 as usize)
    }

    fn malformed(&self, what: String) -> JitError {
        JitError::Malformed {
            kernel: self.kernel.name.clone(),
            what,
        }
    }

    /// The smallest and largest value `index` takes where it is evaluated, or `None` when the
    /// enclosing guards can never all hold.
    fn index_range(&self, index: &Index) -> Option<(i128, i128)> {
        let mut rest = merged_terms(index);
        let (mut lo, mut hi) = (index.offset as i128, index.offset as i128);
        for &(guard, bound) in self.guards.iter().rev() {
            let guard_terms = merged_terms(guard);
            let (glo, ghi) = self.box_range(&guard_terms);
            // The guard's terms range over [-offset, bound - 1 - offset], within their box range.
            let glo = glo.max(-(guard.offset as i128));
            let ghi = ghi.min(bound as i128 - 1 - guard.offset as i128);
            if glo > ghi {
                return None;
            }
            if let Some(multiple) = whole_multiple(&rest, &guard_terms) {
                for &(var, coeff) in &guard_terms {
                    subtract_term(&mut rest, var, multiple * coeff);
                }
                let (a, b) = (multiple * glo, multiple * ghi);
                lo += a.min(b);
                hi += a.max(b);
            }
        }
        let (rlo, rhi) = self.box_range(&rest);
        Some((lo + rlo, hi + rhi))
    }

    /// The range of `Σ coeff·var` with each variable over `0 .. extent`.
    fn box_range(&self, terms: &[(Var, i128)]) -> (i128, i128) {
        terms.iter().fold((0, 0), |(lo, hi), &(var, coeff)| {
            let last = self.extents[var.0 as usize].map_or(0, |e| e as i128 - 1);
            let (a, b) = (0, coeff * last);
            (lo + a.min(b), hi + a.max(b))
        })
    }
}

/// The `InBounds` guards that hold whenever `cond` does.
fn collect_guards<'k>(cond: &'k Cond, guards: &mut Vec<(&'k Index, i64)>) {
    match cond {
        Cond::InBounds(index, bound) => guards.push((index, *bound)),
        Cond::Cmp(..) => {}
        Cond::And(a, b) => {
            collect_guards(a, guards);
            collect_guards(b, guards);
        }
    }
}

/// `index`'s terms with repeated variables added up and zero coefficients dropped, in i128 so
/// that no product or sum of the checks can overflow.
pub(super) fn merged_terms(index: &Index) -> Vec<(Var, i128)> {
    let mut terms: Vec<(Var, i128)> = Vec::new();
    for &(var, coeff) in &index.terms {
        subtract_term(&mut terms, var, -(coeff as i128));
    }
    terms
}

pub(super) fn subtract_term(terms: &mut Vec<(Var, i128)>, var: Var, coeff: i128) {
    match terms.iter().position(|&(v, _)| v == var) {
        Some(i) => terms[i].1 -= coeff,
        None => terms.push((var, -coeff)),
    }
    terms.retain(|&(_, c)| c != 0);
}

/// The `m != 0` such that `terms` contains `m·guard_terms` exactly, if any.
pub(super) fn whole_multiple(terms: &[(Var, i128)], guard_terms: &[(Var, i128)]) -> Option<i128> {
    let coeff_of = |var: Var| {
        terms
            .iter()
            .find(|&&(v, _)| v == var)
            .map_or(0, |&(_, c)| c)
    };
    let &(first_var, first_coeff) = guard_terms.first()?;
    let found = coeff_of(first_var);
    if found == 0 || found % first_coeff != 0 {
        return None;
    }
    let multiple = found / first_coeff;
    guard_terms
        .iter()
        .all(|&(var, coeff)| coeff_of(var) == multiple * coeff)
        .then_some(multiple)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lower::loops::test_builders::index;

    fn lp(var: u32, extent: usize, body: Vec<Stmt>) -> Stmt {
        crate::lower::loops::test_builders::lp(var, extent, false, body)
    }

    fn store(buf: u32, index: Index) -> Stmt {
        Stmt::Store(BufId(buf), index, Expr::Const(1.0))
    }

    fn check(vars: u32, body: Vec<Stmt>, lens: &[usize]) -> Result<(), JitError> {
        check_kernel(
            &Kernel {
                name: "k".to_string(),
                vars,
                locals: 1,
                body,
            },
            lens,
        )
    }

    /// A 2-D padded access `x[(ih)·W + iw]` with `ih = oh + kh - 1`, `iw = ow + kw - 1`
    /// over a 4×4 input and output with a 3×3 kernel; `guards` chooses which axes are guarded.
    fn padded_access(guard_rows: bool, guard_cols: bool) -> Vec<Stmt> {
        let ih = index(&[(0, 1), (2, 1)], -1);
        let iw = index(&[(1, 1), (3, 1)], -1);
        let access = Stmt::Store(
            BufId(0),
            index(&[(0, 4), (2, 4), (1, 1), (3, 1)], -5),
            Expr::Const(0.0),
        );
        let mut inner = vec![access];
        if guard_cols {
            inner = vec![Stmt::If(Cond::InBounds(iw, 4), inner)];
        }
        if guard_rows {
            inner = vec![Stmt::If(Cond::InBounds(ih, 4), inner)];
        }
        vec![lp(
            0,
            4,
            vec![lp(1, 4, vec![lp(2, 3, vec![lp(3, 3, inner)])])],
        )]
    }

    #[test]
    fn exact_fit_passes_and_one_past_the_end_fails() {
        assert_eq!(
            check(
                2,
                vec![lp(
                    0,
                    3,
                    vec![lp(1, 4, vec![store(0, index(&[(0, 4), (1, 1)], 0))])]
                )],
                &[12]
            ),
            Ok(())
        );
        assert_eq!(
            check(
                2,
                vec![lp(
                    0,
                    3,
                    vec![lp(1, 4, vec![store(0, index(&[(0, 4), (1, 1)], 1))])]
                )],
                &[12]
            ),
            Err(JitError::OutOfBounds {
                kernel: "k".to_string(),
                buffer: 0,
                len: 12,
                min_index: 1,
                max_index: 12
            })
        );
    }

    #[test]
    fn negative_coefficients_and_negative_indices() {
        // x[3 - i] for i in 0..4 is in 0..=3; x[2 - i] reaches -1.
        assert_eq!(
            check(
                1,
                vec![lp(0, 4, vec![store(0, index(&[(0, -1)], 3))])],
                &[4]
            ),
            Ok(())
        );
        assert!(matches!(
            check(
                1,
                vec![lp(0, 4, vec![store(0, index(&[(0, -1)], 2))])],
                &[4]
            ),
            Err(JitError::OutOfBounds {
                min_index: -1,
                max_index: 2,
                ..
            })
        ));
    }

    #[test]
    fn guards_on_both_padded_axes_make_the_access_safe() {
        assert_eq!(check(4, padded_access(true, true), &[16]), Ok(()));
        assert!(matches!(
            check(4, padded_access(true, false), &[16]),
            Err(JitError::OutOfBounds { .. })
        ));
        assert!(matches!(
            check(4, padded_access(false, true), &[16]),
            Err(JitError::OutOfBounds { .. })
        ));
    }

    #[test]
    fn a_select_does_not_guard_its_arms() {
        // Both arms run, so the load in the "then" arm is checked without the condition.
        let cond = Cond::InBounds(index(&[(0, 1)], -1), 4);
        let load = Expr::Load(BufId(0), index(&[(0, 1)], -1));
        let select = Expr::Select(Box::new(cond), Box::new(load), Box::new(Expr::Const(0.0)));
        let body = vec![lp(
            0,
            4,
            vec![Stmt::Store(BufId(1), index(&[(0, 1)], 0), select)],
        )];
        assert!(matches!(
            check(1, body, &[4, 4]),
            Err(JitError::OutOfBounds { buffer: 0, .. })
        ));
    }

    #[test]
    fn unknown_buffers_variables_and_locals_are_named() {
        assert_eq!(
            check(1, vec![lp(0, 2, vec![store(3, index(&[(0, 1)], 0))])], &[2]),
            Err(JitError::UnknownBuffer {
                kernel: "k".to_string(),
                buffer: 3,
                table_len: 1
            })
        );
        let unbound = check(
            2,
            vec![lp(0, 2, vec![]), store(0, index(&[(0, 1)], 0))],
            &[2],
        );
        assert!(
            matches!(&unbound, Err(JitError::Malformed { what, .. }) if what.contains("outside its loop"))
        );
        let undeclared = check(1, vec![lp(4, 2, vec![])], &[2]);
        assert!(
            matches!(&undeclared, Err(JitError::Malformed { what, .. }) if what.contains("v4"))
        );
        let rebound = check(1, vec![lp(0, 2, vec![lp(0, 2, vec![])])], &[2]);
        assert!(
            matches!(&rebound, Err(JitError::Malformed { what, .. }) if what.contains("re-binds"))
        );
        let local = check(0, vec![Stmt::Let(Local(1), Expr::Const(0.0))], &[]);
        assert!(matches!(&local, Err(JitError::Malformed { what, .. }) if what.contains("l1")));
    }

    #[test]
    fn a_loop_that_never_runs_is_not_range_checked_but_is_name_checked() {
        assert_eq!(
            check(
                1,
                vec![lp(0, 0, vec![store(0, index(&[(0, 1)], 100))])],
                &[2]
            ),
            Ok(())
        );
        assert!(matches!(
            check(1, vec![lp(0, 0, vec![store(5, index(&[(0, 1)], 0))])], &[2]),
            Err(JitError::UnknownBuffer { buffer: 5, .. })
        ));
    }

    #[test]
    fn a_guard_that_never_holds_makes_its_body_unreachable() {
        let never = Stmt::If(
            Cond::InBounds(index(&[(0, 1)], 10), 5),
            vec![store(0, index(&[], 99))],
        );
        assert_eq!(check(1, vec![lp(0, 3, vec![never])], &[1]), Ok(()));
    }
}
