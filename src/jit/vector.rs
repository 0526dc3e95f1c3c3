//! `f32x4` vectorisation of innermost loops: four iterations per step, then a scalar remainder.
//!
//! Cranelift 0.135 on x64 has no 256-bit types (issue 5), so a vector is `f32x4`. A loop is
//! vectorised when [`is_vectorizable`] proves that running iterations `v .. v+4` lane-wise
//! computes, for every element, exactly the operations the scalar loop does in the same order:
//! - the body is only `Store`/`Accumulate`/`Let` (no nested loop or `If`); a local the body
//!   assigns is assigned before the body reads it (else it would carry a value from the
//!   previous iteration, as a reduction does) and becomes one `f32x4`, whose last lane it
//!   holds after the loop; other locals are invariant in the loop and become splats;
//! - every store's index has a nonzero coefficient on the loop variable: 1 (four contiguous
//!   elements, `store.f32x4`) or another stride (a scatter: `extractlane` and four scalar
//!   stores, in lane order);
//! - a buffer the body writes is read only at the indices it is written at, and those indices
//!   touch no element in two different iterations (they have the same coefficients, and
//!   offsets that differ by no multiple `m·c` of the loop variable's coefficient `c` with
//!   `0 < |m| < extent`; one index, as `y[i] = f(y[i])`, trivially), so no iteration reads or
//!   overwrites another iteration's element (no loop-carried dependence), and the order in
//!   which lanes store cannot matter (a pooling backward writes `dx[2i]` and `dx[2i + 1]`);
//!   other loads have any coefficient: 0 (one element, splat), 1 (`load.f32x4`) or another
//!   stride, negative included (a gather: four scalar loads and `insertlane`, which still
//!   vectorises the arithmetic around them);
//! - every operation has a lane-wise form with the scalar rounding: `fadd`, `fsub`, `fmul`,
//!   `fdiv`, `fma`, `fneg`, `fabs`, `sqrt`, `fmin`, `fmax`, `exp` and `ln` (`math.rs`
//!   computes them on either shape with the same instructions), comparisons as lane masks
//!   with `bitselect` for `Select`; `InBounds` only when invariant (a scalar condition, splat).
//!   One measured exception to "bitwise": when an input of `fmin`/`fmax` is NaN, both forms
//!   return NaN, but x64's scalar sequence returns `0x7fc00000` where the vector one returns
//!   `0xffc00000` (sign bit set). The loop IR excludes NaN inputs to `Max`/`Min`
//!   (`lower::loops`), and refusing them would leave every relu scalar, so they are kept.
//!
//! Each lane then performs the scalar iteration's operations on the same inputs, so the
//! results are bitwise those of the scalar translation (tested below against it and against
//! `lower::interp`). The accesses are those of the scalar iterations, which the bounds checker
//! proved in bounds.
//!
//! Vector loads and stores are `notrap` but not `aligned`: with the `aligned` flag the x64
//! backend may fold a load into a non-VEX SSE instruction's memory operand, which faults on an
//! address that is not a multiple of 16 (`is_mergeable_load` and `XmmMemAligned` in
//! cranelift-codegen's x64 backend); our rows start anywhere.

use std::collections::{BTreeMap, BTreeSet};

use cranelift_codegen::ir::{types, Endianness, InstBuilder, MemFlagsData, Value};

use super::blocked::coefficients;
use super::translate::{float_cc, Translator};
use crate::lower::loops::{BufId, Cond, Expr, Index, Local, Loop, Stmt, UnOp, Var};

/// Lanes of an `f32x4`.
const LANES: i64 = 4;

/// Whether `lp` can run four iterations at a time with bitwise the scalar results; see the
/// module doc for the rules.
pub(super) fn is_vectorizable(lp: &Loop) -> bool {
    let var = lp.var;
    let mut written: BTreeMap<BufId, Vec<&Index>> = BTreeMap::new();
    let mut assigned_in_body = BTreeSet::new();
    for stmt in &lp.body {
        match stmt {
            Stmt::Store(buf, index, _) | Stmt::Accumulate(buf, index, _) => {
                let indices = written.entry(*buf).or_default();
                let apart = |other: &&Index| no_two_iterations_meet(index, other, var, lp.extent);
                if coefficient(index, var) == 0 || !indices.iter().all(apart) {
                    return false;
                }
                if !indices.contains(&index) {
                    indices.push(index);
                }
            }
            Stmt::Let(local, _) => {
                assigned_in_body.insert(*local);
            }
            Stmt::Loop(_) | Stmt::If(..) => return false,
        }
    }
    let mut legality = Legality {
        var,
        written,
        assigned_in_body,
        assigned_so_far: BTreeSet::new(),
    };
    lp.body.iter().all(|stmt| match stmt {
        Stmt::Store(_, _, value) | Stmt::Accumulate(_, _, value) => legality.expr(value),
        Stmt::Let(local, value) => {
            let legal = legality.expr(value);
            legality.assigned_so_far.insert(*local);
            legal
        }
        Stmt::Loop(_) | Stmt::If(..) => false,
    })
}

/// What an expression of the body of a loop over `var` may read.
struct Legality<'l> {
    var: Var,
    /// The indices at which the body writes each buffer it writes.
    written: BTreeMap<BufId, Vec<&'l Index>>,
    /// The locals the body assigns (each iteration its own value: one per lane).
    assigned_in_body: BTreeSet<Local>,
    /// Those assigned by the statements before the current one. A local the body assigns but
    /// reads before assigning carries a value from the previous iteration (a reduction such as
    /// `l0 = l0 + x[i]`), which lanes computed side by side cannot have.
    assigned_so_far: BTreeSet<Local>,
}

impl Legality<'_> {
    fn expr(&self, expr: &Expr) -> bool {
        match expr {
            Expr::Const(_) => true,
            Expr::Local(local) => {
                !self.assigned_in_body.contains(local) || self.assigned_so_far.contains(local)
            }
            Expr::Load(buf, index) => match self.written.get(buf) {
                Some(indices) => indices.contains(&index),
                None => true,
            },
            Expr::IndexValue(_) => true,
            Expr::Unary(op, a) => match op {
                UnOp::Neg | UnOp::Sqrt | UnOp::Abs | UnOp::Exp | UnOp::Ln => self.expr(a),
            },
            Expr::Binary(_, a, b) => self.expr(a) && self.expr(b),
            Expr::Fma(a, b, c) => self.expr(a) && self.expr(b) && self.expr(c),
            Expr::Select(cond, a, b) => self.cond(cond) && self.expr(a) && self.expr(b),
        }
    }

    fn cond(&self, cond: &Cond) -> bool {
        match cond {
            Cond::InBounds(index, _) => coefficient(index, self.var) == 0,
            Cond::Cmp(_, a, b) => self.expr(a) && self.expr(b),
            Cond::And(a, b) => self.cond(a) && self.cond(b),
        }
    }
}

/// Whether no element is reached through `a` in one iteration of a loop over `var` in
/// `0..extent` and through `b` in another: the same nonzero coefficients, and offsets `d` apart
/// with `d` not `m·c` for the coefficient `c` of `var` and `0 < |m| < extent`.
fn no_two_iterations_meet(a: &Index, b: &Index, var: Var, extent: usize) -> bool {
    let coeffs = coefficients(a);
    let Some(&c) = coeffs.get(&var) else {
        return false;
    };
    if coeffs != coefficients(b) {
        return false;
    }
    let d = b.offset - a.offset;
    d == 0 || d % c != 0 || (d / c).unsigned_abs() >= extent as u64
}

/// The coefficient of `var` in `index` (terms may name a variable more than once).
fn coefficient(index: &Index, var: Var) -> i64 {
    index
        .terms
        .iter()
        .filter(|(v, _)| *v == var)
        .map(|(_, c)| c)
        .sum()
}

/// The `f32x4` value of each local the vector body has assigned so far (one lane per
/// iteration); other locals are invariant in the loop and read as splats.
type VectorLocals = BTreeMap<Local, Value>;

/// Flags of vector loads and stores: in bounds (proven), maybe unaligned (see the module doc).
pub(super) fn vector_flags() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

/// Flags of a bitcast between vector types, whose lane order Cranelift requires be explicit.
pub(super) fn lane_bitcast_flags() -> MemFlagsData {
    MemFlagsData::new().with_endianness(Endianness::Little)
}

impl Translator<'_> {
    /// `for var in start .. end { body }` for a loop that [`is_vectorizable`]: a vector loop
    /// while four iterations remain, then the scalar body for the rest (each loop entry- and
    /// bottom-tested, so an empty range runs nothing).
    pub(super) fn translate_vectorized_loop(&mut self, lp: &Loop, start: Value, end: Value) {
        let var = self.vars[lp.var.0 as usize];
        self.builder.def_var(var, start);
        let (body, exit) = self.begin_loop(var, LANES, end);
        let mut lanes = VectorLocals::new();
        for stmt in &lp.body {
            self.translate_vector_stmt(lp.var, &mut lanes, stmt);
        }
        // A local assigned in the body holds, after the loop, the last iteration's value.
        for (local, value) in lanes {
            let last = self.builder.ins().extractlane(value, (LANES - 1) as u8);
            self.define_local(local, last);
        }
        self.end_loop(var, LANES, end, body, exit);

        let (body, exit) = self.begin_loop(var, 1, end);
        self.translate_stmts(&lp.body);
        self.end_loop(var, 1, end, body, exit);
    }

    fn translate_vector_stmt(&mut self, var: Var, lanes: &mut VectorLocals, stmt: &Stmt) {
        match stmt {
            Stmt::Store(buf, index, value) => {
                let value = self.translate_vector_expr(var, lanes, value);
                self.translate_vector_store(var, *buf, index, value);
            }
            Stmt::Accumulate(buf, index, value) => {
                // As the scalar form: the value first, then the old element, then the sum.
                let value = self.translate_vector_expr(var, lanes, value);
                let old = self.translate_vector_expr(var, lanes, &Expr::Load(*buf, index.clone()));
                let sum = self.builder.ins().fadd(old, value);
                self.translate_vector_store(var, *buf, index, sum);
            }
            Stmt::Let(local, value) => {
                let value = self.translate_vector_expr(var, lanes, value);
                lanes.insert(*local, value);
            }
            Stmt::Loop(_) | Stmt::If(..) => {
                unreachable!("is_vectorizable admits only stores, accumulations and lets")
            }
        }
    }

    /// The `f32x4` of `expr` for iterations `var .. var+4`.
    fn translate_vector_expr(&mut self, var: Var, lanes: &VectorLocals, expr: &Expr) -> Value {
        match expr {
            Expr::Const(_) => self.translate_splat(expr),
            Expr::Local(local) => match lanes.get(local) {
                Some(value) => *value,
                None => self.translate_splat(expr),
            },
            Expr::Load(buf, index) => match coefficient(index, var) {
                0 => self.translate_splat(expr),
                1 => self.translate_vector_load(*buf, index),
                stride => self.translate_gathered_load(*buf, index, stride),
            },
            Expr::IndexValue(index) => match coefficient(index, var) {
                0 => self.translate_splat(expr),
                stride => self.translate_lane_indices(index, stride),
            },
            // The same instructions as scalars (exp and ln: math.rs, lane-wise).
            Expr::Unary(..) | Expr::Binary(..) | Expr::Fma(..) => {
                self.translate_arithmetic(expr, &mut |t, e| t.translate_vector_expr(var, lanes, e))
            }
            Expr::Select(cond, a, b) => {
                let mask = self.translate_vector_cond(var, lanes, cond);
                let a = self.translate_vector_expr(var, lanes, a);
                let b = self.translate_vector_expr(var, lanes, b);
                let mask = self
                    .builder
                    .ins()
                    .bitcast(types::F32X4, lane_bitcast_flags(), mask);
                self.builder.ins().bitselect(mask, a, b)
            }
        }
    }

    /// An `i32x4` lane mask (all ones where `cond` holds).
    fn translate_vector_cond(&mut self, var: Var, lanes: &VectorLocals, cond: &Cond) -> Value {
        match cond {
            Cond::InBounds(..) => {
                // Invariant in the loop (is_vectorizable): one scalar test, widened to a mask.
                let holds = self.translate_cond(cond);
                let ones = self.builder.ins().iconst(types::I32, -1);
                let ones = self.builder.ins().splat(types::I32X4, ones);
                let zeros = self.builder.ins().iconst(types::I32, 0);
                let zeros = self.builder.ins().splat(types::I32X4, zeros);
                self.builder.ins().select(holds, ones, zeros)
            }
            Cond::Cmp(op, a, b) => {
                let a = self.translate_vector_expr(var, lanes, a);
                let b = self.translate_vector_expr(var, lanes, b);
                self.builder.ins().fcmp(float_cc(*op), a, b)
            }
            Cond::And(a, b) => {
                let a = self.translate_vector_cond(var, lanes, a);
                let b = self.translate_vector_cond(var, lanes, b);
                self.builder.ins().band(a, b)
            }
        }
    }

    /// A value that is the same in every lane: the scalar translation, splat.
    fn translate_splat(&mut self, expr: &Expr) -> Value {
        let scalar = self.translate_expr(expr);
        self.builder.ins().splat(types::F32X4, scalar)
    }

    /// `[i, i+s, i+2s, i+3s]` for a stride `s`, as `f32`, each converted from `i64` as the
    /// scalar form does (so that even values beyond 2^24 round alike).
    fn translate_lane_indices(&mut self, index: &Index, stride: i64) -> Value {
        let first = self.translate_index(index);
        let first_float = self.builder.ins().fcvt_from_sint(types::F32, first);
        let mut lanes = self.builder.ins().splat(types::F32X4, first_float);
        for lane in 1..LANES {
            let value = self
                .builder
                .ins()
                .iadd_imm_s(first, lane.wrapping_mul(stride));
            let value = self.builder.ins().fcvt_from_sint(types::F32, value);
            lanes = self.builder.ins().insertlane(lanes, value, lane as u8);
        }
        lanes
    }

    fn translate_vector_load(&mut self, buf: BufId, index: &Index) -> Value {
        let (address, offset) = self.translate_address(buf, index);
        self.builder
            .ins()
            .load(types::F32X4, vector_flags(), address, offset)
    }

    /// The four elements at `index` for iterations `var .. var+4` when they are not contiguous
    /// (`stride` elements apart, negative or more than 1): one scalar load per lane, each the
    /// scalar iteration's own load.
    fn translate_gathered_load(&mut self, buf: BufId, index: &Index, stride: i64) -> Value {
        let (address, offset) = self.translate_address(buf, index);
        let mut lanes = None;
        for lane in 0..LANES {
            let (lane_address, lane_offset) = self.lane_address(address, offset, stride, lane);
            let value = self.builder.ins().load(
                types::F32,
                MemFlagsData::trusted(),
                lane_address,
                lane_offset,
            );
            lanes = Some(match lanes {
                None => self.builder.ins().splat(types::F32X4, value),
                Some(lanes) => self.builder.ins().insertlane(lanes, value, lane as u8),
            });
        }
        lanes.expect("a vector has lanes")
    }

    /// Stores the four lanes of `value` at `index` for iterations `var .. var+4`: one vector
    /// store when they are contiguous, else one scalar store per lane, in lane order.
    fn translate_vector_store(&mut self, var: Var, buf: BufId, index: &Index, value: Value) {
        let (address, offset) = self.translate_address(buf, index);
        let stride = coefficient(index, var);
        if stride == 1 {
            self.builder
                .ins()
                .store(vector_flags(), value, address, offset);
            return;
        }
        for lane in 0..LANES {
            let (lane_address, lane_offset) = self.lane_address(address, offset, stride, lane);
            let scalar = self.builder.ins().extractlane(value, lane as u8);
            self.builder
                .ins()
                .store(MemFlagsData::trusted(), scalar, lane_address, lane_offset);
        }
    }

    /// The address of lane `lane` of an access at `address + offset` whose lanes are `stride`
    /// elements apart: the same address with the lane's displacement folded into the offset,
    /// or, when that leaves an `i32`, the address moved by it.
    fn lane_address(
        &mut self,
        address: Value,
        offset: i32,
        stride: i64,
        lane: i64,
    ) -> (Value, i32) {
        let f32_bytes = i64::from(types::F32.bytes());
        let lane_offset =
            i64::from(offset).wrapping_add(lane.wrapping_mul(stride).wrapping_mul(f32_bytes));
        match i32::try_from(lane_offset) {
            Ok(lane_offset) => (address, lane_offset),
            Err(_) => (self.builder.ins().iadd_imm_s(address, lane_offset), 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::random_kernels::{same, Rng};
    use super::super::test_kernels::{bits, both_ways, index, kernel, load, lp};
    use super::super::Buffers;
    use super::is_vectorizable;
    use crate::lower::interp;
    use crate::lower::loops::{
        BinOp, BufId, CmpOp, Cond, Expr, Index, Kernel, Local, Loop, Stmt, UnOp,
    };

    fn inner(stmt: Stmt) -> Loop {
        match stmt {
            Stmt::Loop(lp) => lp,
            other => panic!("not a loop: {other:?}"),
        }
    }

    /// `y[i] += a·x[i]` over `0 .. n` (buffers x = 0, a = 1, y = 2).
    fn axpy(n: usize) -> Stmt {
        let value = Expr::Binary(BinOp::Mul, load(1, &[], 0), load(0, &[(0, 1)], 0));
        lp(
            0,
            n,
            false,
            vec![Stmt::Accumulate(BufId(2), index(&[(0, 1)], 0), value)],
        )
    }

    #[test]
    fn legality_accepts_streaming_loops_and_refuses_what_would_change_results() {
        assert!(is_vectorizable(&inner(axpy(8))));
        let store = |index: Index, value: Expr| {
            inner(lp(0, 8, false, vec![Stmt::Store(BufId(2), index, value)]))
        };
        let x = |terms: &[(u32, i64)], offset| *load(0, terms, offset);
        // Coefficient 1 on the store split over two terms still counts as contiguous.
        assert!(is_vectorizable(&store(
            index(&[(0, 2), (0, -1)], 0),
            x(&[], 3)
        )));
        // A strided store is scattered lane by lane, but a store to one element from every
        // iteration is refused; strided and reversed loads of a buffer the loop does not write
        // are gathered lane by lane.
        assert!(is_vectorizable(&store(index(&[(0, 2)], 0), x(&[], 0))));
        assert!(is_vectorizable(&store(index(&[(0, -3)], 30), x(&[], 0))));
        assert!(!is_vectorizable(&store(index(&[], 0), x(&[(0, 1)], 0))));
        assert!(is_vectorizable(&store(
            index(&[(0, 1)], 0),
            x(&[(0, 2)], 0)
        )));
        assert!(is_vectorizable(&store(
            index(&[(0, 1)], 0),
            x(&[(0, -3)], 30)
        )));
        // ... but not a strided load of the buffer being written (another iteration's element).
        let strided_self = Expr::Load(BufId(2), index(&[(0, 2)], 0));
        assert!(!is_vectorizable(&store(index(&[(0, 1)], 0), strided_self)));
        // A loop-carried dependence: y[i] = y[i - 1] reads the previous iteration's store.
        let shifted = Expr::Load(BufId(2), index(&[(0, 1)], -1));
        assert!(!is_vectorizable(&store(index(&[(0, 1)], 1), shifted)));
        // The same buffer written at two indices: the last writer of an element would change.
        let two_writes = inner(lp(
            0,
            8,
            false,
            vec![
                Stmt::Store(BufId(2), index(&[(0, 1)], 0), x(&[], 0)),
                Stmt::Store(BufId(2), index(&[(0, 1)], 1), x(&[], 1)),
            ],
        ));
        assert!(!is_vectorizable(&two_writes));
        // Two indices that no two iterations share (a pooling backward's `dx[2i]`, `dx[2i + 1]`,
        // `dx[2i + 16]` over 8 iterations), each read only where it is written: accepted; an
        // offset that is a multiple of the stride within the loop's range, or a read at an index
        // not written, is refused.
        let writes = |offsets: &[i64], read: i64| {
            let body = offsets.iter().map(|&offset| {
                let old = Expr::Load(BufId(2), index(&[(0, 2)], read + offset));
                let value = Expr::Binary(BinOp::Add, Box::new(old), load(0, &[(0, 1)], 0));
                Stmt::Store(BufId(2), index(&[(0, 2)], offset), value)
            });
            inner(lp(0, 8, false, body.collect()))
        };
        assert!(is_vectorizable(&writes(&[0, 1], 0)));
        assert!(is_vectorizable(&writes(&[0, 1, 16, 17], 0)));
        assert!(!is_vectorizable(&writes(&[0, 2], 0)));
        assert!(!is_vectorizable(&writes(&[0, 14], 0)));
        assert!(!is_vectorizable(&writes(&[0, 1], 2)));
        // exp and ln have lane-wise forms.
        let exp = Expr::Unary(UnOp::Exp, load(0, &[(0, 1)], 0));
        assert!(is_vectorizable(&store(index(&[(0, 1)], 0), exp)));
        let ln = Expr::Unary(UnOp::Ln, load(0, &[(0, 1)], 0));
        assert!(is_vectorizable(&store(index(&[(0, 1)], 0), ln)));
        // A lane-dependent guard, a local the body reads before assigning (a reduction), a
        // nested loop.
        let guarded = Expr::Select(
            Box::new(Cond::InBounds(index(&[(0, 1)], -2), 8)),
            load(0, &[(0, 1)], 0),
            Box::new(Expr::Const(0.0)),
        );
        assert!(!is_vectorizable(&store(index(&[(0, 1)], 0), guarded)));
        let sum = Expr::Binary(
            BinOp::Add,
            Box::new(Expr::Local(Local(0))),
            load(0, &[(0, 1)], 0),
        );
        let reduction = inner(lp(0, 8, false, vec![Stmt::Let(Local(0), sum)]));
        assert!(!is_vectorizable(&reduction));
        let read_then_assigned = inner(lp(
            0,
            8,
            false,
            vec![
                Stmt::Store(BufId(2), index(&[(0, 1)], 0), Expr::Local(Local(0))),
                Stmt::Let(Local(0), x(&[(0, 1)], 0)),
            ],
        ));
        assert!(!is_vectorizable(&read_then_assigned));
        // Assigned, then read: one value per lane.
        let assigned_then_read = inner(lp(
            0,
            8,
            false,
            vec![
                Stmt::Let(Local(0), x(&[(0, 1)], 0)),
                Stmt::Store(BufId(2), index(&[(0, 1)], 0), Expr::Local(Local(0))),
            ],
        ));
        assert!(is_vectorizable(&assigned_then_read));
        assert!(!is_vectorizable(&inner(lp(0, 8, false, vec![axpy(3)]))));
    }

    #[test]
    fn every_operation_is_bitwise_the_scalar_one_for_every_remainder_and_thread_count() {
        // y[i] = f(x[i], z[i]) with x and z including NaN, infinities, signed zeros and
        // subnormals; l0 = 1.5 is set before the loop, z[3] is an invariant load.
        let x = |o| load(0, &[(1, 1)], o);
        let z = || load(1, &[(1, 1)], 0);
        let cmp = |op| {
            Expr::Select(
                Box::new(Cond::Cmp(op, x(0), z())),
                x(0),
                Box::new(Expr::Local(Local(0))),
            )
        };
        let mut exprs = vec![
            Expr::Unary(UnOp::Neg, x(0)),
            Expr::Unary(UnOp::Abs, x(0)),
            Expr::Unary(UnOp::Sqrt, x(0)),
            Expr::Unary(UnOp::Exp, x(0)),
            Expr::Unary(UnOp::Ln, x(0)),
            // Strided, reversed and (for n = 0 or 1) degenerate gathers: stride 2 reads x[1..]
            // of the next rows too, which are in the buffer.
            *load(0, &[(1, 2)], 0),
            *load(0, &[(0, 1), (1, -1)], 11),
            Expr::IndexValue(index(&[(1, -3), (0, 2)], 7)),
            Expr::Fma(x(0), z(), load(1, &[], 3)),
            Expr::IndexValue(index(&[(1, 1), (0, 3)], -5)),
            Expr::Select(
                Box::new(Cond::And(
                    Box::new(Cond::InBounds(index(&[(0, 1)], -1), 2)),
                    Box::new(Cond::Cmp(CmpOp::Lt, x(1), z())),
                )),
                Box::new(Expr::Const(2.5)),
                x(0),
            ),
        ];
        for op in [
            BinOp::Add,
            BinOp::Sub,
            BinOp::Mul,
            BinOp::Div,
            BinOp::Max,
            BinOp::Min,
        ] {
            exprs.push(Expr::Binary(op, x(0), z()));
        }
        for op in [
            CmpOp::Lt,
            CmpOp::Le,
            CmpOp::Gt,
            CmpOp::Ge,
            CmpOp::Eq,
            CmpOp::Ne,
        ] {
            exprs.push(cmp(op));
        }
        // Besides NaN, infinities, signed zeros and subnormals: the edges of exp's range
        // (math.rs) and values far beyond them, where its clamps and replacements act.
        let specials = [
            f32::NAN,
            -0.0,
            0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            1e-40,
            -1e-40,
            f32::MIN_POSITIVE,
            -3.5,
            2.0,
            88.37,
            88.38,
            -87.336_54,
            -87.34,
            -103.5,
            1e30,
            -1e30,
            f32::MAX,
        ];
        let mut rng = Rng(7);
        for expr in exprs {
            for n in 0..=11 {
                for parallel in [false, true] {
                    // Rows of n + 1 elements: the store's row starts are not 16-byte aligned.
                    let rows = 3;
                    let row = index(&[(0, n as i64 + 1), (1, 1)], 0);
                    let body = vec![lp(
                        0,
                        rows,
                        parallel,
                        vec![
                            Stmt::Let(Local(0), Expr::Const(1.5)),
                            lp(1, n, false, vec![Stmt::Store(BufId(2), row, expr.clone())]),
                        ],
                    )];
                    // Room for the reversed gather's offset.
                    let len = rows * (n + 1) + 16;
                    let mut bufs = Buffers::new(&[len, len, len]);
                    for b in 0..2 {
                        for v in bufs.get_mut(BufId(b)) {
                            *v = if rng.chance(40) {
                                specials[rng.below(specials.len())]
                            } else {
                                rng.value()
                            };
                        }
                    }
                    let kernel = kernel(2, 1, body);
                    let (vector, scalar) = both_ways(&kernel, &bufs, 1 + rng.below(3));
                    if matches!(expr, Expr::Binary(BinOp::Max | BinOp::Min, ..)) {
                        // Both NaN where an input is NaN, but not the same NaN (module doc).
                        let nan_as_one = |bufs: &Buffers| {
                            let mut bits = bits(bufs);
                            let nans = bits[2].iter_mut().filter(|b| f32::from_bits(**b).is_nan());
                            nans.for_each(|b| *b = f32::NAN.to_bits());
                            bits
                        };
                        assert_eq!(
                            nan_as_one(&vector),
                            nan_as_one(&scalar),
                            "n = {n}: {expr:?}"
                        );
                    } else {
                        assert_eq!(bits(&vector), bits(&scalar), "n = {n}: {expr:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn scattered_stores_agree_bitwise_with_scalar_code_and_the_interpreter() {
        // for i in 0..n { l0 = x[i]; y[2i] += l0; y[2i + 1] = x[i] > 0 ? y[2i + 1] + l0 : y[2i + 1];
        //                 z[27 - 3i] = -l0 }: a pooling backward's shape, and a reversed stride.
        for n in 0..=9 {
            let y_at = |offset| index(&[(0, 2)], offset);
            let old = || Box::new(Expr::Load(BufId(1), y_at(1)));
            let positive = Cond::Cmp(CmpOp::Gt, load(0, &[(0, 1)], 0), Box::new(Expr::Const(0.)));
            let l0 = || Box::new(Expr::Local(Local(0)));
            let body = vec![
                Stmt::Let(Local(0), *load(0, &[(0, 1)], 0)),
                Stmt::Accumulate(BufId(1), y_at(0), Expr::Local(Local(0))),
                Stmt::Store(
                    BufId(1),
                    y_at(1),
                    Expr::Select(
                        Box::new(positive),
                        Box::new(Expr::Binary(BinOp::Add, old(), l0())),
                        old(),
                    ),
                ),
                Stmt::Store(
                    BufId(2),
                    index(&[(0, -3)], 27),
                    Expr::Unary(UnOp::Neg, l0()),
                ),
            ];
            let kernel = kernel(1, 1, vec![lp(0, n, false, body)]);
            let Stmt::Loop(inner_loop) = &kernel.body[0] else {
                unreachable!()
            };
            assert!(is_vectorizable(inner_loop));
            let mut bufs = Buffers::new(&[9, 20, 28]);
            let mut rng = Rng(n as u64 + 11);
            for b in 0..3 {
                for v in bufs.get_mut(BufId(b)) {
                    *v = rng.value();
                }
            }
            let (vector, scalar) = both_ways(&kernel, &bufs, 1);
            assert_eq!(bits(&vector), bits(&scalar), "n = {n}");
            let mut expected: Vec<Vec<f32>> = (0..3).map(|b| bufs.get(BufId(b)).to_vec()).collect();
            interp::run(&kernel, &mut expected).expect("interpreter runs");
            for (b, want) in expected.iter().enumerate() {
                assert!(
                    same(vector.get(BufId(b as u32)), want),
                    "n = {n}, buffer {b}"
                );
            }
        }
    }

    #[test]
    fn a_top_level_parallel_loop_is_vectorised_over_each_threads_range() {
        // y[i] += a·x[i] as a kernel's only loop: each thread gets an arbitrary [lo, hi).
        let Stmt::Loop(mut lp) = axpy(23) else {
            unreachable!()
        };
        lp.parallel = true;
        let kernel = kernel(1, 0, vec![Stmt::Loop(lp)]);
        let mut bufs = Buffers::new(&[23, 1, 23]);
        let mut rng = Rng(3);
        for b in [0, 2] {
            for v in bufs.get_mut(BufId(b)) {
                *v = rng.value();
            }
        }
        bufs.get_mut(BufId(1))[0] = 0.3;
        for threads in 1..=3 {
            let (vector, scalar) = both_ways(&kernel, &bufs, threads);
            assert_eq!(bits(&vector), bits(&scalar), "{threads} threads");
            let expected: Vec<f32> = (0..23)
                .map(|i| bufs.get(BufId(2))[i] + 0.3 * bufs.get(BufId(0))[i])
                .collect();
            assert_eq!(vector.get(BufId(2)), expected.as_slice());
        }
    }

    #[test]
    fn a_local_assigned_in_the_loop_is_per_lane_and_keeps_the_last_value_after_it() {
        // for i in 0..n { l0 = -x[i]; y[i] = 1 / (1 + exp(l0)) }  z[0] = l0  (a sigmoid).
        for n in 0..=9 {
            let body = vec![
                lp(
                    0,
                    n,
                    false,
                    vec![
                        Stmt::Let(Local(0), Expr::Unary(UnOp::Neg, load(0, &[(0, 1)], 0))),
                        Stmt::Store(
                            BufId(1),
                            index(&[(0, 1)], 0),
                            Expr::Binary(
                                BinOp::Div,
                                Box::new(Expr::Const(1.0)),
                                Box::new(Expr::Binary(
                                    BinOp::Add,
                                    Box::new(Expr::Const(1.0)),
                                    Box::new(Expr::Unary(
                                        UnOp::Exp,
                                        Box::new(Expr::Local(Local(0))),
                                    )),
                                )),
                            ),
                        ),
                    ],
                ),
                Stmt::Store(BufId(2), index(&[], 0), Expr::Local(Local(0))),
            ];
            let kernel = kernel(1, 1, body);
            let mut bufs = Buffers::new(&[9, 9, 1]);
            let mut rng = Rng(n as u64);
            for v in bufs.get_mut(BufId(0)) {
                *v = rng.value();
            }
            let (vector, scalar) = both_ways(&kernel, &bufs, 1);
            assert_eq!(bits(&vector), bits(&scalar), "n = {n}");
            let last = if n == 0 {
                0.0
            } else {
                -bufs.get(BufId(0))[n - 1]
            };
            assert_eq!(vector.get(BufId(2))[0].to_bits(), last.to_bits(), "n = {n}");
        }
    }

    const INPUT_LEN: usize = 40;
    const ROW: usize = 16;

    /// Random innermost loops shaped like the lowerings' streaming loops: stores and
    /// accumulations of random expressions at `row·ROW + v + offset`, each output usually at one
    /// offset per kernel (vectorisable) and sometimes at a second one (must be refused).
    struct Generator {
        rng: Rng,
        extent: usize,
        /// The offset each output is usually stored at.
        out_offsets: [i64; 2],
        /// Whether the kernel uses `exp` or `ln`, whose inline polynomials (math.rs) differ from
        /// the interpreter's libm by an ulp or so.
        transcendental: bool,
    }

    const ROW_VAR: u32 = 0;
    const INNER: u32 = 1;

    impl Generator {
        fn kernel(&mut self, seed: u64) -> Kernel {
            let rows = 1 + self.rng.below(3);
            // Locals are set in each row from row data only, so rows stay independent.
            let lets = (0..2)
                .map(|l| {
                    let value = Expr::Binary(
                        BinOp::Add,
                        load(0, &[(ROW_VAR, 1)], self.rng.range(0, 30)),
                        Box::new(Expr::Const(self.rng.value())),
                    );
                    Stmt::Let(Local(l), value)
                })
                .collect::<Vec<_>>();
            let body = (0..1 + self.rng.below(3))
                .map(|_| {
                    let out = self.rng.below(2);
                    let mut index = self.out_index(out);
                    if self.rng.chance(10) {
                        index.offset += 1;
                        index.offset %= (ROW - self.extent + 1) as i64;
                    }
                    let value = self.expr(3);
                    match self.rng.below(3) {
                        0 => Stmt::Store(BufId(2 + out as u32), index, value),
                        1 => Stmt::Accumulate(BufId(2 + out as u32), index, value),
                        // Per lane when no earlier statement of the body reads the local.
                        _ => Stmt::Let(Local(self.rng.below(2) as u32), value),
                    }
                })
                .collect();
            let mut row_body = lets;
            row_body.push(lp(INNER, self.extent, false, body));
            // What the locals hold after the loop: their last iteration's values.
            for l in 0..2 {
                let last_column = index(&[(ROW_VAR, ROW as i64)], ROW as i64 - 1);
                row_body.push(Stmt::Accumulate(
                    BufId(2 + l),
                    last_column,
                    Expr::Local(Local(l)),
                ));
            }
            Kernel {
                name: format!("vector{seed}"),
                vars: 2,
                locals: 2,
                body: vec![lp(ROW_VAR, rows, self.rng.chance(50), row_body)],
            }
        }

        fn out_index(&self, out: usize) -> Index {
            index(&[(ROW_VAR, ROW as i64), (INNER, 1)], self.out_offsets[out])
        }

        fn expr(&mut self, depth: usize) -> Expr {
            let boxed = |g: &mut Self| Box::new(g.expr(depth - 1));
            if depth == 0 || self.rng.chance(25) {
                let extent = self.extent as i64;
                return match self.rng.below(6) {
                    0 => Expr::Const(self.rng.value()),
                    1 => {
                        // Contiguous, strided or reversed, within the input for every row.
                        let input = INPUT_LEN as i64;
                        let (stride, offset) = match self.rng.below(4) {
                            0 => (2, self.rng.range(0, input - 2 * extent - 3)),
                            1 => (-1, self.rng.range((extent - 1).max(0), input - 5)),
                            _ => (1, self.rng.range(0, input - extent - 4)),
                        };
                        *load(
                            self.rng.below(2) as u32,
                            &[(INNER, stride), (ROW_VAR, 2)],
                            offset,
                        )
                    }
                    2 => *load(
                        self.rng.below(2) as u32,
                        &[(ROW_VAR, 1)],
                        self.rng.range(0, 30),
                    ),
                    3 => {
                        let out = self.rng.below(2);
                        Expr::Load(BufId(2 + out as u32), self.out_index(out))
                    }
                    4 => Expr::Local(Local(self.rng.below(2) as u32)),
                    _ => {
                        let coeff = self.rng.range(-1, 2);
                        Expr::IndexValue(index(
                            &[(INNER, coeff), (ROW_VAR, 3)],
                            self.rng.range(-4, 4),
                        ))
                    }
                };
            }
            match self.rng.below(12) {
                0 => Expr::Unary(UnOp::Neg, boxed(self)),
                // exp(-|a|) and ln(|a| + 1): finite, so no NaN reaches a max or min (whose
                // NaN differs between the forms, module doc; the loop IR excludes it).
                10 => {
                    self.transcendental = true;
                    let minus_abs = Expr::Unary(UnOp::Neg, self.abs(depth));
                    Expr::Unary(UnOp::Exp, Box::new(minus_abs))
                }
                11 => {
                    self.transcendental = true;
                    let one = Box::new(Expr::Const(1.0));
                    let above_one = Expr::Binary(BinOp::Add, self.abs(depth), one);
                    Expr::Unary(UnOp::Ln, Box::new(above_one))
                }
                1 => Expr::Unary(UnOp::Abs, boxed(self)),
                2 => Expr::Unary(UnOp::Sqrt, Box::new(Expr::Unary(UnOp::Abs, boxed(self)))),
                3 => {
                    let denominator = Expr::Binary(
                        BinOp::Add,
                        Box::new(Expr::Unary(UnOp::Abs, boxed(self))),
                        Box::new(Expr::Const(1.0)),
                    );
                    Expr::Binary(BinOp::Div, boxed(self), Box::new(denominator))
                }
                4..=6 => {
                    let ops = [BinOp::Add, BinOp::Sub, BinOp::Mul, BinOp::Max, BinOp::Min];
                    Expr::Binary(ops[self.rng.below(5)], boxed(self), boxed(self))
                }
                7 => Expr::Fma(boxed(self), boxed(self), boxed(self)),
                _ => Expr::Select(Box::new(self.cond(depth - 1)), boxed(self), boxed(self)),
            }
        }

        /// `|e|` for a random `e` one level down.
        fn abs(&mut self, depth: usize) -> Box<Expr> {
            Box::new(Expr::Unary(UnOp::Abs, Box::new(self.expr(depth - 1))))
        }

        fn cond(&mut self, depth: usize) -> Cond {
            match self.rng.below(if depth > 0 { 3 } else { 2 }) {
                0 => Cond::InBounds(index(&[(ROW_VAR, 1)], self.rng.range(-1, 1)), 2),
                1 => {
                    let ops = [
                        CmpOp::Lt,
                        CmpOp::Le,
                        CmpOp::Gt,
                        CmpOp::Ge,
                        CmpOp::Eq,
                        CmpOp::Ne,
                    ];
                    let op = ops[self.rng.below(ops.len())];
                    Cond::Cmp(op, Box::new(self.expr(depth)), Box::new(self.expr(depth)))
                }
                _ => Cond::And(
                    Box::new(self.cond(depth - 1)),
                    Box::new(self.cond(depth - 1)),
                ),
            }
        }
    }

    #[test]
    fn random_streaming_loops_agree_bitwise_with_scalar_code_and_the_interpreter() {
        let mut vectorized = 0;
        for seed in 0..300 {
            let mut rng = Rng(seed);
            let extent = rng.below(14);
            let room = (ROW - extent) as i64;
            let out_offsets = [rng.range(0, room), rng.range(0, room)];
            let mut generator = Generator {
                rng,
                extent,
                out_offsets,
                transcendental: false,
            };
            let kernel = generator.kernel(seed);
            let Stmt::Loop(rows) = &kernel.body[0] else {
                unreachable!()
            };
            let Some(Stmt::Loop(inner)) = rows.body.iter().find(|s| matches!(s, Stmt::Loop(_)))
            else {
                unreachable!()
            };
            vectorized += usize::from(is_vectorizable(inner) && extent >= 4);

            let lens = [INPUT_LEN, INPUT_LEN, rows.extent * ROW, rows.extent * ROW];
            let mut bufs = Buffers::new(&lens);
            for b in 0..4 {
                for v in bufs.get_mut(BufId(b)) {
                    *v = generator.rng.value();
                }
            }
            let (vector, scalar) = both_ways(&kernel, &bufs, 1 + generator.rng.below(3));
            assert_eq!(bits(&vector), bits(&scalar), "seed {seed}\n{kernel:#?}");
            if generator.transcendental {
                // Bitwise the scalar JIT, as every kernel; the scalar exp and ln are checked
                // against f64 in math.rs, not against the interpreter's libm.
                continue;
            }
            let mut expected: Vec<Vec<f32>> = (0..4).map(|b| bufs.get(BufId(b)).to_vec()).collect();
            interp::run(&kernel, &mut expected).expect("interpreter runs");
            for (b, want) in expected.iter().enumerate() {
                let got = vector.get(BufId(b as u32));
                assert!(
                    same(got, want),
                    "seed {seed}, buffer {b}: {got:?} != {want:?}"
                );
            }
        }
        // Extents 4..=13 are 10 of 14, and most kernels keep one offset per output.
        assert!(
            vectorized > 120,
            "only {vectorized} of 300 loops were vectorised"
        );
    }
}
