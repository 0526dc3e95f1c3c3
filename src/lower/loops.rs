//! The loop IR: what every op lowers to, and what the JIT translates to Cranelift.
//!
//! A [`Kernel`] is one generated function. It reads and writes `f32` buffers named by [`BufId`]
//! (indices into the plan's buffer table, see `lower::step`), through affine [`Index`]es of
//! loop variables whose bounds are compile-time constants. There are no pointers and no
//! dynamic sizes: the checker's shapes fix every extent, which is what keeps the JIT's
//! unchecked loads and stores in bounds (the runtime checks each buffer's length once, at the
//! boundary).
//!
//! Semantics, exactly as the JIT implements them:
//! - `Loop { var, extent, body }` runs `body` for `var = 0 .. extent`, in order.
//!   A kernel's *top-level* loop marked `parallel` may be split by the runtime into disjoint
//!   ranges `[lo, hi)` run on different threads; its iterations must write disjoint elements
//!   (and every reduction must stay inside one iteration, in a fixed order), so results are
//!   bitwise identical for every thread count.
//! - `If(cond, body)` runs `body` when `cond` holds.
//! - `Store(b, i, e)`: `b[i] = e`; `Accumulate(b, i, e)`: `b[i] += e`.
//! - `Let(l, e)` assigns the `f32` local `l` (locals start at 0.0 on entry of the kernel).
//! - Expressions are `f32`-valued, evaluated left to right; `Select` evaluates both arms.
//! - `Cond::InBounds(i, n)` is `0 <= i < n` (padding); `Cond::Cmp` compares `f32`s with IEEE
//!   semantics (a comparison with NaN is false).
//!
//! Later speed work (retiling, NCHWc layouts, micro-kernels) changes what ops lower to, not
//! this vocabulary's meaning; new statement kinds are added here with their semantics.
//!
//! ## Contraction nests
//!
//! Contractions (conv forward and gradients, dense) are lowered to loops of one fixed shape,
//! which the JIT recognises and runs register-blocked (`jit/blocked.rs`): several output
//! elements at once, each in its own register, `f32x4` along the *lane* loop. Blocking changes
//! only which outputs are computed side by side, never the order of any one output's sum, so the
//! results are bitwise those of the plain reading of the loops (the interpreter's):
//!
//! ```text
//! for i in 0..I {                        // rows (optional): blocked by unrolling
//!     for j in 0..J {                    // lanes: vectorised
//!         Let(acc, init)
//!         for r1 in 0..R1 { … for rk in 0..Rk {          // reduction loops, perfectly nested
//!             Let(acc, Fma(a, b, Local(acc)))
//!         } … }
//!         Store(out, o, epilogue)
//!     }
//! }
//! ```
//!
//! - `a` and `b` use no local (usually each is a `Load`); `init` uses no local and no reduction
//!   variable; `epilogue` uses no reduction variable and reads the sum as `Local(acc)` (e.g.
//!   `acc`, `max(acc, 0)`); `acc` is used nowhere else in the kernel.
//! - No expression of the nest reads `out`'s buffer, except `init`, and then only at exactly
//!   `o` (so `init = Load(out, o)` accumulates into the output); `a` and `b` never read `out`.
//! - The rows loop, when present, has the lanes loop as its whole body; it may be a kernel's
//!   top-level `parallel` loop.
//! - For speed the lowering puts on `j` an axis along which `o` and the operand that changes
//!   with `j` have unit stride; an operand that does not depend on `j` is broadcast.

/// A buffer of the plan's table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BufId(pub u32);

/// A loop variable, numbered within its kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Var(pub u32);

/// An `f32` scalar local, numbered within its kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Local(pub u32);

/// An affine index `Σ coeff·var + offset`, in elements.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Index {
    pub terms: Vec<(Var, i64)>,
    pub offset: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnOp {
    Neg,
    /// `e^x`, within the JIT's stated maximum relative error.
    Exp,
    /// Natural logarithm.
    Ln,
    Sqrt,
    Abs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    /// IEEE `max` (NaN-propagating choice left to the JIT; inputs here are never NaN by design).
    Max,
    Min,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CmpOp {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Cond {
    /// `0 <= index < bound`
    InBounds(Index, i64),
    Cmp(CmpOp, Box<Expr>, Box<Expr>),
    And(Box<Cond>, Box<Cond>),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    Const(f32),
    Load(BufId, Index),
    Local(Local),
    /// The integer value of an index, as `f32` (exact below 2^24).
    IndexValue(Index),
    Unary(UnOp, Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    /// `a·b + c`, fused (one rounding).
    Fma(Box<Expr>, Box<Expr>, Box<Expr>),
    /// `if cond { a } else { b }`
    Select(Box<Cond>, Box<Expr>, Box<Expr>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Loop {
    pub var: Var,
    pub extent: usize,
    /// Only meaningful on a kernel's top-level loops; see the module doc.
    pub parallel: bool,
    pub body: Vec<Stmt>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Stmt {
    Loop(Loop),
    If(Cond, Vec<Stmt>),
    Store(BufId, Index, Expr),
    Accumulate(BufId, Index, Expr),
    Let(Local, Expr),
}

/// One generated function.
#[derive(Clone, Debug, PartialEq)]
pub struct Kernel {
    /// Stable, unique within a plan: `<node path>.<forward|backward|...>`, e.g. `conv1.forward`.
    pub name: String,
    /// Number of loop variables (`Var(0..vars)`) and locals (`Local(0..locals)`) used.
    pub vars: u32,
    pub locals: u32,
    pub body: Vec<Stmt>,
}

/// One use of a buffer or local by a statement or expression, as [`visit_uses`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Use {
    Load(BufId),
    Store(BufId),
    /// `b[i] += e`: a read and a write of `b`.
    Accumulate(BufId),
    /// A `Let` or a read of the local.
    Local(Local),
}

/// Calls `visit` for every buffer and local `stmts` use, in program order (a statement's
/// target before its value).
pub fn visit_uses(stmts: &[Stmt], visit: &mut impl FnMut(Use)) {
    for stmt in stmts {
        match stmt {
            Stmt::Loop(lp) => visit_uses(&lp.body, visit),
            Stmt::If(cond, body) => {
                visit_cond_uses(cond, visit);
                visit_uses(body, visit);
            }
            Stmt::Store(buf, _, value) => {
                visit(Use::Store(*buf));
                visit_expr_uses(value, visit);
            }
            Stmt::Accumulate(buf, _, value) => {
                visit(Use::Accumulate(*buf));
                visit_expr_uses(value, visit);
            }
            Stmt::Let(local, value) => {
                visit(Use::Local(*local));
                visit_expr_uses(value, visit);
            }
        }
    }
}

/// [`visit_uses`] for one condition.
pub fn visit_cond_uses(cond: &Cond, visit: &mut impl FnMut(Use)) {
    match cond {
        Cond::InBounds(..) => {}
        Cond::Cmp(_, a, b) => {
            visit_expr_uses(a, visit);
            visit_expr_uses(b, visit);
        }
        Cond::And(a, b) => {
            visit_cond_uses(a, visit);
            visit_cond_uses(b, visit);
        }
    }
}

/// [`visit_uses`] for one expression.
pub fn visit_expr_uses(expr: &Expr, visit: &mut impl FnMut(Use)) {
    match expr {
        Expr::Const(_) | Expr::IndexValue(_) => {}
        Expr::Load(buf, _) => visit(Use::Load(*buf)),
        Expr::Local(local) => visit(Use::Local(*local)),
        Expr::Unary(_, a) => visit_expr_uses(a, visit),
        Expr::Binary(_, a, b) => {
            visit_expr_uses(a, visit);
            visit_expr_uses(b, visit);
        }
        Expr::Fma(a, b, c) => {
            visit_expr_uses(a, visit);
            visit_expr_uses(b, visit);
            visit_expr_uses(c, visit);
        }
        Expr::Select(cond, a, b) => {
            visit_cond_uses(cond, visit);
            visit_expr_uses(a, visit);
            visit_expr_uses(b, visit);
        }
    }
}

/// Small builders of loop IR for unit tests, here and in the JIT's.
#[cfg(test)]
pub(crate) mod test_builders {
    use super::{Index, Loop, Stmt, Var};

    /// `Σ coeff·Var(var) + offset`.
    pub(crate) fn index(terms: &[(u32, i64)], offset: i64) -> Index {
        Index {
            terms: terms.iter().map(|&(v, c)| (Var(v), c)).collect(),
            offset,
        }
    }

    /// `for Var(var) in 0..extent { body }`.
    pub(crate) fn lp(var: u32, extent: usize, parallel: bool, body: Vec<Stmt>) -> Stmt {
        Stmt::Loop(Loop {
            var: Var(var),
            extent,
            parallel,
            body,
        })
    }
}
