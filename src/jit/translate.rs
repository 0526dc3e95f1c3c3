//! Loop IR → Cranelift IR, one `translate_*` method per construct (after cranelift-jit-demo's
//! `src/jit.rs`). Each [`Piece`] of a kernel (see `pieces.rs`) becomes one function of the
//! signature `fn(table: *const *mut f32, lo: i64, hi: i64)`, where `table[b]` is buffer `b`'s
//! base and `[lo, hi)` the iterations a parallel piece runs (a sequential piece ignores them).
//!
//! Loop variables are `i64` and locals `f32` [`Variable`]s; cranelift-frontend builds the SSA.
//! Loops are bottom-tested (`extent > 0` is known at compile time, so a loop needs one branch
//! per iteration). Addresses are `base + Σ 4·coeff·var`, the constant part folded into the
//! load's or store's offset. Loads and stores are `trusted` (no trap, aligned): the bounds
//! checker (`bounds.rs`) proved every access in bounds.

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{
    types, AbiParam, Block, Function, InstBuilder, MemFlagsData, Signature, Type, Value,
};
use cranelift_codegen::isa::{CallConv, TargetFrontendConfig};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext, Variable};

use super::blocked;
use super::math;
use super::pieces::{used_buffers, used_locals, Piece};
use super::vector;
use super::CompileOptions;
use crate::lower::loops::{
    visit_uses, BinOp, BufId, CmpOp, Cond, Expr, Index, Kernel, Local, Loop, Stmt, UnOp, Use,
};

/// The signature of every generated function: `(table, lo, hi)`.
pub(crate) fn piece_signature(call_conv: CallConv, pointer_type: Type) -> Signature {
    let mut sig = Signature::new(call_conv);
    sig.params.push(AbiParam::new(pointer_type));
    sig.params.push(AbiParam::new(types::I64));
    sig.params.push(AbiParam::new(types::I64));
    sig
}

/// Fills `func` (whose signature is [`piece_signature`]) with the code of `piece`.
/// The kernel must have passed the bounds checker.
pub(crate) fn translate_piece(
    func: &mut Function,
    builder_context: &mut FunctionBuilderContext,
    kernel: &Kernel,
    piece: Piece,
    frontend_config: TargetFrontendConfig,
    options: CompileOptions,
) {
    let pointer_type = frontend_config.pointer_type();
    let mut builder = FunctionBuilder::new(func, builder_context);
    let entry = builder.create_block();
    builder.append_block_params_for_function_params(entry);
    builder.switch_to_block(entry);
    builder.seal_block(entry);
    let [table, lo, hi] = *builder.block_params(entry) else {
        unreachable!("piece_signature has three parameters")
    };

    let stmts = piece.stmts();
    // Base pointers are loaded once, in the entry block, so they dominate every use.
    let mut bases = vec![None; used_buffers(stmts).last().map_or(0, |b| b.0 as usize + 1)];
    for buf in used_buffers(stmts) {
        let slot_offset = i32::try_from(buf.0 as usize * pointer_type.bytes() as usize)
            .expect("buffer tables are far smaller than 2 GiB");
        bases[buf.0 as usize] = Some(builder.ins().load(
            pointer_type,
            MemFlagsData::trusted(),
            table,
            slot_offset,
        ));
    }
    let vars = (0..kernel.vars)
        .map(|_| builder.declare_var(types::I64))
        .collect();
    let locals: Vec<Variable> = (0..kernel.locals)
        .map(|_| builder.declare_var(types::F32))
        .collect();
    for local in used_locals(stmts) {
        let zero = builder.ins().f32const(0.0);
        builder.def_var(locals[local.0 as usize], zero);
    }

    let mut read_only: Vec<bool> = bases.iter().map(Option::is_some).collect();
    visit_uses(stmts, &mut |item| {
        if let Use::Store(buf) | Use::Accumulate(buf) = item {
            read_only[buf.0 as usize] = false;
        }
    });
    let mut translator = Translator {
        builder,
        bases,
        vars,
        locals,
        local_uses: blocked::local_uses(stmts, kernel.locals),
        vectorize: options.vectorize,
        read_only,
    };
    match piece {
        Piece::Sequential(stmts) => translator.translate_stmts(stmts),
        Piece::Parallel(lp) => translator.translate_counted_loop(lp, lo, hi, true),
    }
    translator.builder.ins().return_(&[]);
    translator.builder.finalize(frontend_config);
}

/// The state of one piece's translation; `vector.rs` adds the `f32x4` methods.
pub(super) struct Translator<'a> {
    pub(super) builder: FunctionBuilder<'a>,
    /// Base pointer of each buffer the piece uses, by `BufId`.
    pub(super) bases: Vec<Option<Value>>,
    pub(super) vars: Vec<Variable>,
    locals: Vec<Variable>,
    /// How many times the piece assigns or reads each local (`blocked.rs` needs a contraction's
    /// sum to be used only inside its nest).
    pub(super) local_uses: Vec<usize>,
    /// Whether contraction nests are register-blocked (`blocked.rs`) and innermost loops
    /// vectorised (`vector.rs`) when legal.
    vectorize: bool,
    /// By `BufId`: the piece reads the buffer and never writes it, so its loads may be marked
    /// `readonly` (`blocked.rs` does, so that Cranelift places each next to its use).
    pub(super) read_only: Vec<bool>,
}

impl Translator<'_> {
    pub(super) fn translate_stmts(&mut self, stmts: &[Stmt]) {
        for stmt in stmts {
            self.translate_stmt(stmt);
        }
    }

    fn translate_stmt(&mut self, stmt: &Stmt) {
        match stmt {
            Stmt::Loop(lp) => self.translate_loop(lp),
            Stmt::If(cond, body) => self.translate_if(cond, body),
            Stmt::Store(buf, index, value) => {
                let value = self.translate_expr(value);
                self.translate_store(*buf, index, value);
            }
            Stmt::Accumulate(buf, index, value) => {
                let value = self.translate_expr(value);
                let old = self.translate_load(*buf, index);
                let sum = self.builder.ins().fadd(old, value);
                self.translate_store(*buf, index, sum);
            }
            Stmt::Let(local, value) => {
                let value = self.translate_expr(value);
                self.builder.def_var(self.locals[local.0 as usize], value);
            }
        }
    }

    fn translate_loop(&mut self, lp: &Loop) {
        if lp.extent == 0 {
            return;
        }
        let start = self.builder.ins().iconst(types::I64, 0);
        let end = self.builder.ins().iconst(types::I64, lp.extent as i64);
        self.translate_counted_loop(lp, start, end, false);
    }

    /// `for var in start .. end { body }`, entry- and bottom-tested. `runtime_range`: the range
    /// is a thread's share of a parallel loop, not the loop's constant extent.
    fn translate_counted_loop(&mut self, lp: &Loop, start: Value, end: Value, runtime_range: bool) {
        if self.vectorize && self.try_translate_contraction(lp, start, end, runtime_range) {
            return;
        }
        if self.vectorize && vector::is_vectorizable(lp) {
            self.translate_vectorized_loop(lp, start, end);
            return;
        }
        let var = self.vars[lp.var.0 as usize];
        self.builder.def_var(var, start);
        let (body, exit) = self.begin_loop(var, 1, end);
        self.translate_stmts(&lp.body);
        self.end_loop(var, 1, end, body, exit);
    }

    /// Emits a loop `while var + step <= end { body; var += step }` up to its body, entry
    /// tested; `var` must be defined. Returns the body and exit blocks for [`Self::end_loop`].
    pub(super) fn begin_loop(&mut self, var: Variable, step: i64, end: Value) -> (Block, Block) {
        let body = self.builder.create_block();
        let exit = self.builder.create_block();
        let current = self.builder.use_var(var);
        let fits = self.fits(current, step, end);
        self.builder.ins().brif(fits, body, &[], exit, &[]);
        self.builder.switch_to_block(body);
        (body, exit)
    }

    pub(super) fn end_loop(
        &mut self,
        var: Variable,
        step: i64,
        end: Value,
        body: Block,
        exit: Block,
    ) {
        let current = self.builder.use_var(var);
        let next = self.builder.ins().iadd_imm_s(current, step);
        self.builder.def_var(var, next);
        let fits = self.fits(next, step, end);
        self.builder.ins().brif(fits, body, &[], exit, &[]);
        // Both predecessors of the body (entry and back edge) are known only now.
        self.builder.seal_block(body);
        self.builder.switch_to_block(exit);
        self.builder.seal_block(exit);
    }

    /// An `i8` that is 1 when `position + step <= end`.
    fn fits(&mut self, position: Value, step: i64, end: Value) -> Value {
        let last = self.builder.ins().iadd_imm_s(position, step);
        self.builder
            .ins()
            .icmp(IntCC::SignedLessThanOrEqual, last, end)
    }

    fn translate_if(&mut self, cond: &Cond, body: &[Stmt]) {
        let holds = self.translate_cond(cond);
        let then_block = self.builder.create_block();
        let merge_block = self.builder.create_block();
        self.builder
            .ins()
            .brif(holds, then_block, &[], merge_block, &[]);
        self.builder.switch_to_block(then_block);
        self.builder.seal_block(then_block);
        self.translate_stmts(body);
        self.builder.ins().jump(merge_block, &[]);
        self.builder.switch_to_block(merge_block);
        self.builder.seal_block(merge_block);
    }

    /// An `i8` that is 1 when `cond` holds.
    pub(super) fn translate_cond(&mut self, cond: &Cond) -> Value {
        match cond {
            Cond::InBounds(index, bound) => {
                // 0 <= i < n as one unsigned comparison: a negative i is a huge unsigned one.
                let value = self.translate_index(index);
                self.builder
                    .ins()
                    .icmp_imm_s(IntCC::UnsignedLessThan, value, *bound)
            }
            Cond::Cmp(op, a, b) => {
                let a = self.translate_expr(a);
                let b = self.translate_expr(b);
                self.builder.ins().fcmp(float_cc(*op), a, b)
            }
            Cond::And(a, b) => {
                let a = self.translate_cond(a);
                let b = self.translate_cond(b);
                self.builder.ins().band(a, b)
            }
        }
    }

    pub(super) fn translate_expr(&mut self, expr: &Expr) -> Value {
        match expr {
            Expr::Const(c) => self.builder.ins().f32const(*c),
            Expr::Load(buf, index) => self.translate_load(*buf, index),
            Expr::Local(local) => self.builder.use_var(self.locals[local.0 as usize]),
            Expr::IndexValue(index) => {
                let value = self.translate_index(index);
                self.builder.ins().fcvt_from_sint(types::F32, value)
            }
            Expr::Unary(..) | Expr::Binary(..) | Expr::Fma(..) => {
                self.translate_arithmetic(expr, &mut |t, e| t.translate_expr(e))
            }
            Expr::Select(cond, a, b) => {
                let holds = self.translate_cond(cond);
                let a = self.translate_expr(a);
                let b = self.translate_expr(b);
                self.builder.ins().select(holds, a, b)
            }
        }
    }

    /// A unary, binary or fused multiply-add `expr` (each the same instructions on `f32` and
    /// `f32x4`), its operands evaluated left to right by `operand`: shared by the scalar,
    /// vector and blocked translations, which differ only in how they reach the leaves.
    ///
    /// # Panics
    /// On any other expression (a caller's bug).
    pub(super) fn translate_arithmetic(
        &mut self,
        expr: &Expr,
        operand: &mut impl FnMut(&mut Self, &Expr) -> Value,
    ) -> Value {
        if let Some(x) = sigmoid_argument(expr) {
            let x = operand(self, x);
            return math::translate_sigmoid(&mut self.builder, x);
        }
        match expr {
            Expr::Unary(op, a) => {
                let a = operand(self, a);
                self.translate_unary(*op, a)
            }
            Expr::Binary(op, a, b) => {
                let a = operand(self, a);
                let b = operand(self, b);
                self.translate_binary(*op, a, b)
            }
            Expr::Fma(a, b, c) => {
                let a = operand(self, a);
                let b = operand(self, b);
                let c = operand(self, c);
                self.builder.ins().fma(a, b, c)
            }
            other => unreachable!("not arithmetic: {other:?}"),
        }
    }

    pub(super) fn translate_unary(&mut self, op: UnOp, a: Value) -> Value {
        match op {
            UnOp::Neg => self.builder.ins().fneg(a),
            UnOp::Exp => math::translate_exp(&mut self.builder, a),
            UnOp::Ln => math::translate_ln(&mut self.builder, a),
            UnOp::Sqrt => self.builder.ins().sqrt(a),
            UnOp::Abs => self.builder.ins().fabs(a),
        }
    }

    pub(super) fn translate_binary(&mut self, op: BinOp, a: Value, b: Value) -> Value {
        match op {
            BinOp::Add => self.builder.ins().fadd(a, b),
            BinOp::Sub => self.builder.ins().fsub(a, b),
            BinOp::Mul => self.builder.ins().fmul(a, b),
            BinOp::Div => self.builder.ins().fdiv(a, b),
            BinOp::Max => self.builder.ins().fmax(a, b),
            BinOp::Min => self.builder.ins().fmin(a, b),
        }
    }

    fn translate_load(&mut self, buf: BufId, index: &Index) -> Value {
        let (address, offset) = self.translate_address(buf, index);
        self.builder
            .ins()
            .load(types::F32, MemFlagsData::trusted(), address, offset)
    }

    fn translate_store(&mut self, buf: BufId, index: &Index, value: Value) {
        let (address, offset) = self.translate_address(buf, index);
        self.builder
            .ins()
            .store(MemFlagsData::trusted(), value, address, offset);
    }

    /// Sets `local` to `value` from here on (the vectoriser gives a local assigned in a vector
    /// loop its last lane).
    pub(super) fn define_local(&mut self, local: Local, value: Value) {
        self.builder.def_var(self.locals[local.0 as usize], value);
    }

    /// `(base + Σ 4·coeff·var, 4·offset)`: the constant byte offset goes in the instruction
    /// when it fits in 32 bits. The checker proved the whole sum in bounds, not each part, so
    /// the parts are computed with wrapping arithmetic, as the machine adds them.
    pub(super) fn translate_address(&mut self, buf: BufId, index: &Index) -> (Value, i32) {
        let base = self.bases[buf.0 as usize].expect("used_buffers lists every accessed buffer");
        let f32_bytes = i64::from(types::F32.bytes());
        let mut address = base;
        for &(var, coeff) in &index.terms {
            let value = self.builder.use_var(self.vars[var.0 as usize]);
            let scaled = self
                .builder
                .ins()
                .imul_imm_s(value, coeff.wrapping_mul(f32_bytes));
            address = self.builder.ins().iadd(address, scaled);
        }
        let offset_bytes = index.offset.wrapping_mul(f32_bytes);
        match i32::try_from(offset_bytes) {
            Ok(offset) => (address, offset),
            Err(_) => (self.builder.ins().iadd_imm_s(address, offset_bytes), 0),
        }
    }

    /// The `i64` value `Σ coeff·var + offset`.
    pub(super) fn translate_index(&mut self, index: &Index) -> Value {
        let mut sum = self.builder.ins().iconst(types::I64, index.offset);
        for &(var, coeff) in &index.terms {
            let value = self.builder.use_var(self.vars[var.0 as usize]);
            let scaled = self.builder.ins().imul_imm_s(value, coeff);
            sum = self.builder.ins().iadd(sum, scaled);
        }
        sum
    }
}

/// IEEE comparisons: false when either side is NaN, except `Ne`, which is true (as in Rust).
pub(super) fn float_cc(op: CmpOp) -> FloatCC {
    match op {
        CmpOp::Lt => FloatCC::LessThan,
        CmpOp::Le => FloatCC::LessThanOrEqual,
        CmpOp::Gt => FloatCC::GreaterThan,
        CmpOp::Ge => FloatCC::GreaterThanOrEqual,
        CmpOp::Eq => FloatCC::Equal,
        CmpOp::Ne => FloatCC::NotEqual,
    }
}

/// `x` when `expr` is `1 / (1 + e^(−x))`, the sigmoid as `lower::activation::apply` writes it,
/// which has a translation of its own ([`math::translate_sigmoid`]).
fn sigmoid_argument(expr: &Expr) -> Option<&Expr> {
    let Expr::Binary(BinOp::Div, one, denominator) = expr else {
        return None;
    };
    let Expr::Binary(BinOp::Add, other_one, exp) = denominator.as_ref() else {
        return None;
    };
    let Expr::Unary(UnOp::Exp, negated) = exp.as_ref() else {
        return None;
    };
    let Expr::Unary(UnOp::Neg, x) = negated.as_ref() else {
        return None;
    };
    let is_one = |e: &Expr| matches!(e, Expr::Const(c) if *c == 1.0);
    (is_one(one) && is_one(other_one)).then_some(x.as_ref())
}

#[cfg(test)]
mod tests {
    use super::super::test_kernels::{index, kernel, load, lp, ramp, run_one};
    use crate::lower::loops::{BinOp, BufId, CmpOp, Cond, Expr, Local, Stmt, UnOp};

    #[test]
    fn nested_loops_with_accumulate_and_fma_match_a_matrix_product_exactly() {
        // c[i, j] = Σ_k a[i, k]·b[k, j] as fma(a, b, c) with k innermost: the same rounding
        // sequence as `mul_add` in the same order, so the comparison is exact.
        let (m, n, k) = (5, 7, 9);
        let body = vec![lp(
            0,
            m,
            false,
            vec![lp(
                1,
                n,
                false,
                vec![lp(
                    2,
                    k,
                    false,
                    vec![Stmt::Store(
                        BufId(2),
                        index(&[(0, n as i64), (1, 1)], 0),
                        Expr::Fma(
                            load(0, &[(0, k as i64), (2, 1)], 0),
                            load(1, &[(2, n as i64), (1, 1)], 0),
                            load(2, &[(0, n as i64), (1, 1)], 0),
                        ),
                    )],
                )],
            )],
        )];
        let (a, b) = (ramp(m * k, 0.37, 0.1), ramp(k * n, 0.91, -0.4));
        let bufs = run_one(kernel(3, 0, body), &[m * k, k * n, m * n], &[&a, &b], 1);
        let mut expected = vec![0.0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                for kk in 0..k {
                    expected[i * n + j] = a[i * k + kk].mul_add(b[kk * n + j], expected[i * n + j]);
                }
            }
        }
        assert_eq!(bufs.get(BufId(2)), expected.as_slice());
    }

    #[test]
    fn in_bounds_guard_implements_zero_padding() {
        // y[o] += x[o + t - 1]·w[t] for t in 0..3, skipped where o + t - 1 is outside 0..5.
        let guarded = Stmt::If(
            Cond::InBounds(index(&[(0, 1), (1, 1)], -1), 5),
            vec![Stmt::Accumulate(
                BufId(2),
                index(&[(0, 1)], 0),
                Expr::Binary(
                    BinOp::Mul,
                    load(0, &[(0, 1), (1, 1)], -1),
                    load(1, &[(1, 1)], 0),
                ),
            )],
        );
        let body = vec![lp(0, 5, false, vec![lp(1, 3, false, vec![guarded])])];
        let x = [1.0, 2.0, 3.0, 4.0, 5.0];
        let w = [10.0, 100.0, 1000.0];
        let bufs = run_one(kernel(2, 0, body), &[5, 3, 5], &[&x, &w], 1);
        assert_eq!(bufs.get(BufId(2)), &[2100.0, 3210.0, 4320.0, 5430.0, 540.0]);
    }

    #[test]
    fn locals_carry_a_running_maximum_and_start_at_zero() {
        // Per row: l0 = max(l0, x[r, c]) over c, then y[r] = l0 and l1 (never assigned) adds 0.
        let body = vec![lp(
            0,
            3,
            false,
            vec![
                Stmt::Let(Local(0), Expr::Const(f32::NEG_INFINITY)),
                lp(
                    1,
                    4,
                    false,
                    vec![Stmt::Let(
                        Local(0),
                        Expr::Binary(
                            BinOp::Max,
                            Box::new(Expr::Local(Local(0))),
                            load(0, &[(0, 4), (1, 1)], 0),
                        ),
                    )],
                ),
                Stmt::Store(
                    BufId(1),
                    index(&[(0, 1)], 0),
                    Expr::Binary(
                        BinOp::Add,
                        Box::new(Expr::Local(Local(0))),
                        Box::new(Expr::Local(Local(1))),
                    ),
                ),
            ],
        )];
        let x = [
            1.0, -7.0, 3.0, 2.0, -5.0, -4.0, -6.0, -9.0, 0.5, 8.0, 8.5, -1.0,
        ];
        let bufs = run_one(kernel(2, 2, body), &[12, 3], &[&x], 1);
        assert_eq!(bufs.get(BufId(1)), &[3.0, -4.0, 8.5]);
    }

    /// `y[i] = f(x[i], z[i])` for the elements of `x` and `z`.
    fn elementwise(expr: Expr, x: &[f32], z: &[f32]) -> Vec<f32> {
        let n = x.len();
        let body = vec![lp(
            0,
            n,
            false,
            vec![Stmt::Store(BufId(2), index(&[(0, 1)], 0), expr)],
        )];
        run_one(kernel(1, 0, body), &[n, n, n], &[x, z], 1)
            .get(BufId(2))
            .to_vec()
    }

    type Unary = fn(f32) -> f32;
    type Binary = fn(f32, f32) -> f32;
    type Compare = fn(&f32, &f32) -> bool;

    const X: [f32; 8] = [1.5, -2.0, 0.0, 3.25, -0.75, 7.0, 2.0, 1e-3];
    const Z: [f32; 8] = [0.5, -2.0, 4.0, -1.0, -0.5, 7.5, 2.0, 3.0];

    #[test]
    fn every_unary_op_matches_rust() {
        let ops: [(UnOp, Unary); 3] = [
            (UnOp::Neg, |a| -a),
            (UnOp::Abs, f32::abs),
            (UnOp::Sqrt, f32::sqrt),
        ];
        for (op, reference) in ops {
            let got = elementwise(Expr::Unary(op, load(0, &[(0, 1)], 0)), &X, &Z);
            let expected: Vec<f32> = X.iter().map(|&a| reference(a)).collect();
            // Bitwise, so that NaN from sqrt of a negative compares too.
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&expected), "{op:?}");
        }
    }

    #[test]
    fn every_binary_op_matches_rust() {
        let ops: [(BinOp, Binary); 6] = [
            (BinOp::Add, |a, b| a + b),
            (BinOp::Sub, |a, b| a - b),
            (BinOp::Mul, |a, b| a * b),
            (BinOp::Div, |a, b| a / b),
            (BinOp::Max, f32::max),
            (BinOp::Min, f32::min),
        ];
        for (op, reference) in ops {
            let got = elementwise(
                Expr::Binary(op, load(0, &[(0, 1)], 0), load(1, &[(0, 1)], 0)),
                &X,
                &Z,
            );
            let expected: Vec<f32> = X.iter().zip(&Z).map(|(&a, &b)| reference(a, b)).collect();
            assert_eq!(got, expected, "{op:?}");
        }
    }

    #[test]
    fn every_comparison_matches_rust_through_select_including_nan() {
        let x = [1.0, 2.0, 3.0, f32::NAN, 1.0];
        let z = [2.0, 2.0, 1.0, 1.0, f32::NAN];
        let ops: [(CmpOp, Compare); 6] = [
            (CmpOp::Lt, f32::lt),
            (CmpOp::Le, f32::le),
            (CmpOp::Gt, f32::gt),
            (CmpOp::Ge, f32::ge),
            (CmpOp::Eq, f32::eq),
            (CmpOp::Ne, f32::ne),
        ];
        for (op, reference) in ops {
            let cond = Cond::Cmp(op, load(0, &[(0, 1)], 0), load(1, &[(0, 1)], 0));
            let expr = Expr::Select(
                Box::new(cond),
                Box::new(Expr::Const(1.0)),
                Box::new(Expr::Const(-1.0)),
            );
            let got = elementwise(expr, &x, &z);
            let expected: Vec<f32> = x
                .iter()
                .zip(&z)
                .map(|(a, b)| if reference(a, b) { 1.0 } else { -1.0 })
                .collect();
            assert_eq!(got, expected, "{op:?}");
        }
    }

    #[test]
    fn and_of_conditions_and_index_values() {
        // y[i, j] = (i·3 + j - 4) where 1 <= i and j < 2 (as InBounds), else -100.
        let cond = Cond::And(
            Box::new(Cond::InBounds(index(&[(0, 1)], -1), 10)),
            Box::new(Cond::InBounds(index(&[(1, 1)], 0), 2)),
        );
        let value = Expr::IndexValue(index(&[(0, 3), (1, 1)], -4));
        let store = Stmt::Store(
            BufId(0),
            index(&[(0, 3), (1, 1)], 0),
            Expr::Select(
                Box::new(cond),
                Box::new(value),
                Box::new(Expr::Const(-100.0)),
            ),
        );
        let body = vec![lp(0, 3, false, vec![lp(1, 3, false, vec![store])])];
        let bufs = run_one(kernel(2, 0, body), &[9], &[], 1);
        assert_eq!(
            bufs.get(BufId(0)),
            &[-100.0, -100.0, -100.0, -1.0, 0.0, -100.0, 2.0, 3.0, -100.0]
        );
    }
}
