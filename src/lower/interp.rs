//! A slow, obvious interpreter of the loop IR: the oracle for the JIT and the bounds checker
//! of every lowering.
//!
//! It follows the semantics of `lower::loops` literally (loops in order, expressions left to
//! right, `Select` evaluating both arms) and checks what the JIT cannot: every buffer access is
//! in bounds, every buffer, loop variable and local exists and is in scope, and (in
//! [`run_checking_parallel`]) that parallel iterations never share an element one of them
//! writes. A violation is an [`InterpError`] naming the kernel and the access, never a panic. `Exp` and `Ln` use Rust's
//! `f32` functions, so the JIT's polynomial `exp` is compared against it with a tolerance.

use std::fmt;

use super::loops::{BinOp, BufId, CmpOp, Cond, Expr, Index, Kernel, Local, Stmt, UnOp, Var};
use super::races::{Access, RaceLog};

/// What went wrong while interpreting a kernel.
#[derive(Clone, Debug, PartialEq)]
pub enum InterpError {
    /// A load, store or accumulate outside its buffer.
    OutOfBounds {
        kernel: String,
        buf: BufId,
        index: i64,
        len: usize,
    },
    /// A `BufId` beyond the buffers handed to [`run`].
    UnknownBuffer { kernel: String, buf: BufId },
    /// A loop variable used outside the loop that binds it, bound twice, or not below `vars`.
    UnboundVar { kernel: String, var: Var },
    /// A local not below the kernel's `locals`.
    UnknownLocal { kernel: String, local: Local },
    /// Two iterations of a top-level parallel loop touch one element and one of them writes
    /// it (only [`run_checking_parallel`] looks for this).
    Race {
        kernel: String,
        buf: BufId,
        index: usize,
        iterations: (i64, i64),
    },
}

impl fmt::Display for InterpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InterpError::OutOfBounds {
                kernel,
                buf,
                index,
                len,
            } => write!(
                f,
                "kernel `{kernel}`: index {index} is outside buffer {} of length {len}",
                buf.0
            ),
            InterpError::UnknownBuffer { kernel, buf } => {
                write!(f, "kernel `{kernel}`: buffer {} does not exist", buf.0)
            }
            InterpError::UnboundVar { kernel, var } => {
                write!(
                    f,
                    "kernel `{kernel}`: loop variable v{} is not in scope",
                    var.0
                )
            }
            InterpError::Race {
                kernel,
                buf,
                index,
                iterations: (a, b),
            } => write!(
                f,
                "kernel `{kernel}`: iterations {a} and {b} of the parallel loop both touch \
                 element {index} of buffer {} and one writes it",
                buf.0
            ),
            InterpError::UnknownLocal { kernel, local } => write!(
                f,
                "kernel `{kernel}`: local l{} is beyond the kernel's locals",
                local.0
            ),
        }
    }
}

impl std::error::Error for InterpError {}

/// Runs `kernel` on `bufs` (indexed by `BufId`), checking every access.
///
/// On error the buffers hold whatever was written before the faulty access.
pub fn run(kernel: &Kernel, bufs: &mut [Vec<f32>]) -> Result<(), InterpError> {
    Machine::new(kernel, bufs, None).block(&kernel.body)
}

/// Runs `kernel` like [`run`] and also checks the parallelism contract of `lower::loops`: no
/// element touched by one iteration of a top-level parallel loop is written by another. With
/// every reduction inside one iteration, this is what makes results identical for any split
/// of the loop across threads.
pub fn run_checking_parallel(kernel: &Kernel, bufs: &mut [Vec<f32>]) -> Result<(), InterpError> {
    let log = RaceLog::default();
    Machine::new(kernel, bufs, Some(log)).block(&kernel.body)
}

/// The interpreter's state: loop variables in scope (`None` outside their loop) and locals.
struct Machine<'a> {
    kernel: &'a Kernel,
    bufs: &'a mut [Vec<f32>],
    vars: Vec<Option<i64>>,
    locals: Vec<f32>,
    /// Loops entered and not yet left (0 at the kernel's top level).
    depth: usize,
    races: Option<RaceLog>,
}

impl<'a> Machine<'a> {
    fn new(kernel: &'a Kernel, bufs: &'a mut [Vec<f32>], races: Option<RaceLog>) -> Self {
        Machine {
            kernel,
            bufs,
            vars: vec![None; kernel.vars as usize],
            locals: vec![0.0; kernel.locals as usize],
            depth: 0,
            races,
        }
    }

    fn block(&mut self, stmts: &[Stmt]) -> Result<(), InterpError> {
        stmts.iter().try_for_each(|stmt| self.stmt(stmt))
    }

    fn stmt(&mut self, stmt: &Stmt) -> Result<(), InterpError> {
        match stmt {
            Stmt::Loop(l) => {
                let slot = self.var_slot(l.var)?;
                if self.vars[slot].is_some() {
                    return Err(self.unbound(l.var));
                }
                let tracked = l.parallel && self.depth == 0;
                self.depth += 1;
                for value in 0..l.extent as i64 {
                    self.vars[slot] = Some(value);
                    if let (true, Some(log)) = (tracked, &mut self.races) {
                        log.iteration = Some(value);
                    }
                    self.block(&l.body)?;
                }
                if let (true, Some(log)) = (tracked, &mut self.races) {
                    *log = RaceLog::default();
                }
                self.depth -= 1;
                self.vars[slot] = None;
                Ok(())
            }
            Stmt::If(cond, body) => {
                if self.cond(cond)? {
                    self.block(body)?;
                }
                Ok(())
            }
            Stmt::Store(buf, index, e) => {
                let value = self.expr(e)?;
                *self.element(*buf, index, Access::Write)? = value;
                Ok(())
            }
            Stmt::Accumulate(buf, index, e) => {
                let value = self.expr(e)?;
                *self.element(*buf, index, Access::Write)? += value;
                Ok(())
            }
            Stmt::Let(local, e) => {
                let value = self.expr(e)?;
                let slot = self.local_slot(*local)?;
                self.locals[slot] = value;
                Ok(())
            }
        }
    }

    fn cond(&mut self, cond: &Cond) -> Result<bool, InterpError> {
        Ok(match cond {
            Cond::InBounds(index, bound) => {
                let i = self.index(index)?;
                0 <= i && i < *bound
            }
            Cond::Cmp(op, a, b) => {
                let (a, b) = (self.expr(a)?, self.expr(b)?);
                match op {
                    CmpOp::Lt => a < b,
                    CmpOp::Le => a <= b,
                    CmpOp::Gt => a > b,
                    CmpOp::Ge => a >= b,
                    CmpOp::Eq => a == b,
                    CmpOp::Ne => a != b,
                }
            }
            // Both sides are evaluated, as the JIT may: a guard must not protect an access.
            Cond::And(a, b) => {
                let a = self.cond(a)?;
                let b = self.cond(b)?;
                a && b
            }
        })
    }

    fn expr(&mut self, e: &Expr) -> Result<f32, InterpError> {
        Ok(match e {
            Expr::Const(c) => *c,
            Expr::Load(buf, index) => *self.element(*buf, index, Access::Read)?,
            Expr::Local(local) => self.locals[self.local_slot(*local)?],
            Expr::IndexValue(index) => self.index(index)? as f32,
            Expr::Unary(op, a) => {
                let a = self.expr(a)?;
                match op {
                    UnOp::Neg => -a,
                    UnOp::Exp => a.exp(),
                    UnOp::Ln => a.ln(),
                    UnOp::Sqrt => a.sqrt(),
                    UnOp::Abs => a.abs(),
                }
            }
            Expr::Binary(op, a, b) => {
                let (a, b) = (self.expr(a)?, self.expr(b)?);
                match op {
                    BinOp::Add => a + b,
                    BinOp::Sub => a - b,
                    BinOp::Mul => a * b,
                    BinOp::Div => a / b,
                    BinOp::Max => a.max(b),
                    BinOp::Min => a.min(b),
                }
            }
            Expr::Fma(a, b, c) => {
                let (a, b, c) = (self.expr(a)?, self.expr(b)?, self.expr(c)?);
                a.mul_add(b, c)
            }
            Expr::Select(cond, a, b) => {
                let cond = self.cond(cond)?;
                let (a, b) = (self.expr(a)?, self.expr(b)?);
                if cond {
                    a
                } else {
                    b
                }
            }
        })
    }

    fn index(&self, index: &Index) -> Result<i64, InterpError> {
        index
            .terms
            .iter()
            .try_fold(index.offset, |sum, &(var, coeff)| {
                let slot = self.var_slot(var)?;
                let value = self.vars[slot].ok_or_else(|| self.unbound(var))?;
                Ok(sum + coeff * value)
            })
    }

    fn element(
        &mut self,
        buf: BufId,
        index: &Index,
        access: Access,
    ) -> Result<&mut f32, InterpError> {
        let i = self.index(index)?;
        let kernel = &self.kernel.name;
        let data = self
            .bufs
            .get_mut(buf.0 as usize)
            .ok_or_else(|| InterpError::UnknownBuffer {
                kernel: kernel.clone(),
                buf,
            })?;
        let len = data.len();
        let element = usize::try_from(i).ok().filter(|&e| e < len);
        let Some(element) = element else {
            return Err(InterpError::OutOfBounds {
                kernel: kernel.clone(),
                buf,
                index: i,
                len,
            });
        };
        if let Some(iterations) = self
            .races
            .as_mut()
            .and_then(|log| log.record(buf, element, access))
        {
            return Err(InterpError::Race {
                kernel: kernel.clone(),
                buf,
                index: element,
                iterations,
            });
        }
        Ok(&mut data[element])
    }

    fn var_slot(&self, var: Var) -> Result<usize, InterpError> {
        let slot = var.0 as usize;
        if slot < self.vars.len() {
            Ok(slot)
        } else {
            Err(self.unbound(var))
        }
    }

    fn local_slot(&self, local: Local) -> Result<usize, InterpError> {
        let slot = local.0 as usize;
        if slot < self.locals.len() {
            Ok(slot)
        } else {
            Err(InterpError::UnknownLocal {
                kernel: self.kernel.name.clone(),
                local,
            })
        }
    }

    fn unbound(&self, var: Var) -> InterpError {
        InterpError::UnboundVar {
            kernel: self.kernel.name.clone(),
            var,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lower::loops::Loop;

    fn idx(terms: &[(u32, i64)], offset: i64) -> Index {
        Index {
            terms: terms.iter().map(|&(v, c)| (Var(v), c)).collect(),
            offset,
        }
    }

    fn looped(var: u32, extent: usize, body: Vec<Stmt>) -> Stmt {
        Stmt::Loop(Loop {
            var: Var(var),
            extent,
            parallel: false,
            body,
        })
    }

    fn kernel(vars: u32, locals: u32, body: Vec<Stmt>) -> Kernel {
        Kernel {
            name: "test".into(),
            vars,
            locals,
            body,
        }
    }

    /// y[i] = sum_j a[i, j] * x[j] for a 2×3 matrix: exact small integers.
    #[test]
    fn matrix_vector_product() {
        let k = kernel(
            2,
            0,
            vec![looped(
                0,
                2,
                vec![looped(
                    1,
                    3,
                    vec![Stmt::Accumulate(
                        BufId(2),
                        idx(&[(0, 1)], 0),
                        Expr::Binary(
                            BinOp::Mul,
                            Box::new(Expr::Load(BufId(0), idx(&[(0, 3), (1, 1)], 0))),
                            Box::new(Expr::Load(BufId(1), idx(&[(1, 1)], 0))),
                        ),
                    )],
                )],
            )],
        );
        let mut bufs = vec![vec![1., 2., 3., 4., 5., 6.], vec![1., 0., -1.], vec![0.; 2]];
        run(&k, &mut bufs).unwrap();
        assert_eq!(bufs[2], vec![-2., -2.]);
    }

    #[test]
    fn out_of_bounds_store_is_an_error() {
        let k = kernel(
            1,
            0,
            vec![looped(
                0,
                4,
                vec![Stmt::Store(BufId(0), idx(&[(0, 1)], 0), Expr::Const(1.))],
            )],
        );
        let mut bufs = vec![vec![0.; 3]];
        let err = run(&k, &mut bufs).unwrap_err();
        assert_eq!(
            err,
            InterpError::OutOfBounds {
                kernel: "test".into(),
                buf: BufId(0),
                index: 3,
                len: 3
            }
        );
        assert_eq!(bufs[0], vec![1., 1., 1.]);
    }

    #[test]
    fn negative_load_inside_an_in_bounds_guard_is_fine_but_outside_is_not() {
        // Padding pattern: load x[i - 1] only when 0 <= i - 1 < 3.
        let guarded = |guard: bool| {
            let store = Stmt::Store(
                BufId(1),
                idx(&[(0, 1)], 0),
                Expr::Load(BufId(0), idx(&[(0, 1)], -1)),
            );
            let body = if guard {
                vec![Stmt::If(Cond::InBounds(idx(&[(0, 1)], -1), 3), vec![store])]
            } else {
                vec![store]
            };
            kernel(1, 0, vec![looped(0, 3, body)])
        };
        let mut bufs = vec![vec![7., 8., 9.], vec![0.; 3]];
        run(&guarded(true), &mut bufs).unwrap();
        assert_eq!(bufs[1], vec![0., 7., 8.]);
        assert!(matches!(
            run(&guarded(false), &mut bufs),
            Err(InterpError::OutOfBounds { index: -1, .. })
        ));
    }

    #[test]
    fn scope_errors_are_reported() {
        let use_outside = kernel(
            1,
            0,
            vec![Stmt::Store(BufId(0), idx(&[(0, 1)], 0), Expr::Const(0.))],
        );
        let mut bufs = vec![vec![0.; 1]];
        assert!(matches!(
            run(&use_outside, &mut bufs),
            Err(InterpError::UnboundVar { var: Var(0), .. })
        ));
        let rebound = kernel(1, 0, vec![looped(0, 1, vec![looped(0, 1, vec![])])]);
        assert!(matches!(
            run(&rebound, &mut bufs),
            Err(InterpError::UnboundVar { .. })
        ));
        let bad_local = kernel(0, 0, vec![Stmt::Let(Local(0), Expr::Const(1.))]);
        assert!(matches!(
            run(&bad_local, &mut bufs),
            Err(InterpError::UnknownLocal { .. })
        ));
        let bad_buf = kernel(
            0,
            0,
            vec![Stmt::Store(BufId(5), idx(&[], 0), Expr::Const(1.))],
        );
        assert!(matches!(
            run(&bad_buf, &mut bufs),
            Err(InterpError::UnknownBuffer { buf: BufId(5), .. })
        ));
    }

    /// Running max with locals and Select; NaN comparisons are false.
    #[test]
    fn locals_select_and_comparisons() {
        let k = kernel(
            1,
            1,
            vec![
                Stmt::Let(Local(0), Expr::Const(f32::NEG_INFINITY)),
                looped(
                    0,
                    4,
                    vec![Stmt::Let(
                        Local(0),
                        Expr::Select(
                            Box::new(Cond::Cmp(
                                CmpOp::Gt,
                                Box::new(Expr::Load(BufId(0), idx(&[(0, 1)], 0))),
                                Box::new(Expr::Local(Local(0))),
                            )),
                            Box::new(Expr::Load(BufId(0), idx(&[(0, 1)], 0))),
                            Box::new(Expr::Local(Local(0))),
                        ),
                    )],
                ),
                Stmt::Store(BufId(1), idx(&[], 0), Expr::Local(Local(0))),
                Stmt::Store(
                    BufId(1),
                    idx(&[], 1),
                    Expr::Fma(
                        Box::new(Expr::IndexValue(idx(&[], 3))),
                        Box::new(Expr::Unary(UnOp::Sqrt, Box::new(Expr::Const(4.)))),
                        Box::new(Expr::Const(0.5)),
                    ),
                ),
            ],
        );
        let mut bufs = vec![vec![1., 5., f32::NAN, 3.], vec![0.; 2]];
        run(&k, &mut bufs).unwrap();
        assert_eq!(bufs[1], vec![5., 6.5]);
    }

    fn parallel_sum(into_one_element: bool) -> Kernel {
        // y[i or 0] += x[i] over a parallel i: a race only when every iteration hits y[0].
        let target = if into_one_element {
            idx(&[], 0)
        } else {
            idx(&[(0, 1)], 0)
        };
        let mut k = kernel(
            1,
            0,
            vec![looped(
                0,
                3,
                vec![Stmt::Accumulate(
                    BufId(1),
                    target,
                    Expr::Load(BufId(0), idx(&[(0, 1)], 0)),
                )],
            )],
        );
        if let Stmt::Loop(l) = &mut k.body[0] {
            l.parallel = true;
        }
        k
    }

    #[test]
    fn shared_writes_across_parallel_iterations_are_races() {
        let mut bufs = vec![vec![1., 2., 3.], vec![0.; 3]];
        run_checking_parallel(&parallel_sum(false), &mut bufs).unwrap();
        assert_eq!(bufs[1], vec![1., 2., 3.]);
        let err = run_checking_parallel(&parallel_sum(true), &mut bufs).unwrap_err();
        assert!(
            matches!(
                err,
                InterpError::Race {
                    index: 0,
                    iterations: (0, 1),
                    ..
                }
            ),
            "{err}"
        );
        // The plain interpreter does not look.
        run(&parallel_sum(true), &mut bufs).unwrap();
    }
}
