//! Loop IR → Cranelift IR, one `translate_*` method per construct (after cranelift-jit-demo's
//! `src/jit.rs`).
//!
//! A kernel is compiled as a list of [`Piece`]s, each one Cranelift function of the signature
//! `fn(table: *const *mut f32, lo: i64, hi: i64)`, where `table[b]` is buffer `b`'s base:
//! - a maximal run of top-level statements that are not parallel loops is a `Sequential`
//!   piece, which ignores `lo` and `hi` and runs on one thread;
//! - a top-level loop marked `parallel` is a `Parallel` piece that runs its iterations
//!   `lo .. hi`; the runtime calls it on disjoint ranges from several threads.
//!
//! The runtime runs the pieces in order, each finished before the next starts, so the order of
//! the loop IR's top-level statements is kept however many threads run. A local lives in one
//! piece (checked by [`check_locals_stay_in_piece`]): each generated function starts its locals
//! at 0.0, which is then exactly the kernel's "locals start at 0.0 on entry".
//!
//! Loop variables are `i64` and locals `f32` [`Variable`]s; cranelift-frontend builds the SSA.
//! Loops are bottom-tested (`extent > 0` is known at compile time, so a loop needs one branch
//! per iteration). Addresses are `base + Σ 4·coeff·var`, the constant part folded into the
//! load's or store's offset. Loads and stores are `trusted` (no trap, aligned): the bounds
//! checker (`bounds.rs`) proved every access in bounds.

use std::collections::BTreeSet;

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{
    types, AbiParam, Function, InstBuilder, MemFlagsData, Signature, Type, Value,
};
use cranelift_codegen::isa::{CallConv, TargetFrontendConfig};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext, Variable};

use super::{math, JitError};
use crate::lower::loops::{
    BinOp, BufId, CmpOp, Cond, Expr, Index, Kernel, Local, Loop, Stmt, UnOp,
};

/// A part of a kernel compiled as one function; see the module doc.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Piece<'k> {
    Sequential(&'k [Stmt]),
    Parallel(&'k Loop),
}

impl Piece<'_> {
    fn stmts(&self) -> &[Stmt] {
        match self {
            Piece::Sequential(stmts) => stmts,
            Piece::Parallel(lp) => &lp.body,
        }
    }
}

/// Splits a kernel's top-level statements into pieces, in order.
pub(crate) fn split_pieces(kernel: &Kernel) -> Vec<Piece<'_>> {
    let mut pieces = Vec::new();
    let mut run_start = 0;
    for (i, stmt) in kernel.body.iter().enumerate() {
        if let Stmt::Loop(lp @ Loop { parallel: true, .. }) = stmt {
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

    let mut translator = Translator {
        builder,
        bases,
        vars,
        locals,
    };
    match piece {
        Piece::Sequential(stmts) => translator.translate_stmts(stmts),
        Piece::Parallel(lp) => translator.translate_counted_loop(lp, lo, hi, true),
    }
    translator.builder.ins().return_(&[]);
    translator.builder.finalize(frontend_config);
}

struct Translator<'a> {
    builder: FunctionBuilder<'a>,
    /// Base pointer of each buffer the piece uses, by `BufId`.
    bases: Vec<Option<Value>>,
    vars: Vec<Variable>,
    locals: Vec<Variable>,
}

impl Translator<'_> {
    fn translate_stmts(&mut self, stmts: &[Stmt]) {
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

    /// `for var in start .. end { body }`, bottom-tested; `may_be_empty` adds the entry test.
    fn translate_counted_loop(&mut self, lp: &Loop, start: Value, end: Value, may_be_empty: bool) {
        let var = self.vars[lp.var.0 as usize];
        let body_block = self.builder.create_block();
        let exit_block = self.builder.create_block();
        self.builder.def_var(var, start);
        if may_be_empty {
            let not_empty = self.builder.ins().icmp(IntCC::SignedLessThan, start, end);
            self.builder
                .ins()
                .brif(not_empty, body_block, &[], exit_block, &[]);
        } else {
            self.builder.ins().jump(body_block, &[]);
        }

        self.builder.switch_to_block(body_block);
        self.translate_stmts(&lp.body);
        let current = self.builder.use_var(var);
        let next = self.builder.ins().iadd_imm_s(current, 1);
        self.builder.def_var(var, next);
        let again = self.builder.ins().icmp(IntCC::SignedLessThan, next, end);
        self.builder
            .ins()
            .brif(again, body_block, &[], exit_block, &[]);
        // Both predecessors of the body (entry and back edge) are known only now.
        self.builder.seal_block(body_block);

        self.builder.switch_to_block(exit_block);
        self.builder.seal_block(exit_block);
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
    fn translate_cond(&mut self, cond: &Cond) -> Value {
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

    fn translate_expr(&mut self, expr: &Expr) -> Value {
        match expr {
            Expr::Const(c) => self.builder.ins().f32const(*c),
            Expr::Load(buf, index) => self.translate_load(*buf, index),
            Expr::Local(local) => self.builder.use_var(self.locals[local.0 as usize]),
            Expr::IndexValue(index) => {
                let value = self.translate_index(index);
                self.builder.ins().fcvt_from_sint(types::F32, value)
            }
            Expr::Unary(op, a) => {
                let a = self.translate_expr(a);
                self.translate_unary(*op, a)
            }
            Expr::Binary(op, a, b) => {
                let a = self.translate_expr(a);
                let b = self.translate_expr(b);
                self.translate_binary(*op, a, b)
            }
            Expr::Fma(a, b, c) => {
                let a = self.translate_expr(a);
                let b = self.translate_expr(b);
                let c = self.translate_expr(c);
                self.builder.ins().fma(a, b, c)
            }
            Expr::Select(cond, a, b) => {
                let holds = self.translate_cond(cond);
                let a = self.translate_expr(a);
                let b = self.translate_expr(b);
                self.builder.ins().select(holds, a, b)
            }
        }
    }

    fn translate_unary(&mut self, op: UnOp, a: Value) -> Value {
        match op {
            UnOp::Neg => self.builder.ins().fneg(a),
            UnOp::Exp => math::translate_exp(&mut self.builder, a),
            UnOp::Ln => math::translate_ln(&mut self.builder, a),
            UnOp::Sqrt => self.builder.ins().sqrt(a),
            UnOp::Abs => self.builder.ins().fabs(a),
        }
    }

    fn translate_binary(&mut self, op: BinOp, a: Value, b: Value) -> Value {
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

    /// `(base + Σ 4·coeff·var, 4·offset)`: the constant byte offset goes in the instruction.
    fn translate_address(&mut self, buf: BufId, index: &Index) -> (Value, i32) {
        let base = self.bases[buf.0 as usize].expect("used_buffers lists every accessed buffer");
        let f32_bytes = types::F32.bytes() as i64;
        let mut address = base;
        for &(var, coeff) in &index.terms {
            let value = self.builder.use_var(self.vars[var.0 as usize]);
            let scaled = self.builder.ins().imul_imm_s(value, coeff * f32_bytes);
            address = self.builder.ins().iadd(address, scaled);
        }
        // The checker proved base + 4·index in bounds, so the offset fits whenever the buffer is
        // under 2 GiB; a larger one gets its offset added here.
        match i32::try_from(index.offset * f32_bytes) {
            Ok(offset) => (address, offset),
            Err(_) => (
                self.builder
                    .ins()
                    .iadd_imm_s(address, index.offset * f32_bytes),
                0,
            ),
        }
    }

    /// The `i64` value `Σ coeff·var + offset`.
    fn translate_index(&mut self, index: &Index) -> Value {
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
fn float_cc(op: CmpOp) -> FloatCC {
    match op {
        CmpOp::Lt => FloatCC::LessThan,
        CmpOp::Le => FloatCC::LessThanOrEqual,
        CmpOp::Gt => FloatCC::GreaterThan,
        CmpOp::Ge => FloatCC::GreaterThanOrEqual,
        CmpOp::Eq => FloatCC::Equal,
        CmpOp::Ne => FloatCC::NotEqual,
    }
}

/// The buffers `stmts` reads or writes, in order.
fn used_buffers(stmts: &[Stmt]) -> BTreeSet<BufId> {
    let mut found = BTreeSet::new();
    visit_stmts(stmts, &mut |item| {
        if let Item::Buffer(buf) = item {
            found.insert(buf);
        }
    });
    found
}

/// The locals `stmts` reads or writes, in order.
fn used_locals(stmts: &[Stmt]) -> BTreeSet<Local> {
    let mut found = BTreeSet::new();
    visit_stmts(stmts, &mut |item| {
        if let Item::Local(local) = item {
            found.insert(local);
        }
    });
    found
}

enum Item {
    Buffer(BufId),
    Local(Local),
}

fn visit_stmts(stmts: &[Stmt], visit: &mut impl FnMut(Item)) {
    for stmt in stmts {
        match stmt {
            Stmt::Loop(lp) => visit_stmts(&lp.body, visit),
            Stmt::If(cond, body) => {
                visit_cond(cond, visit);
                visit_stmts(body, visit);
            }
            Stmt::Store(buf, _, value) | Stmt::Accumulate(buf, _, value) => {
                visit(Item::Buffer(*buf));
                visit_expr(value, visit);
            }
            Stmt::Let(local, value) => {
                visit(Item::Local(*local));
                visit_expr(value, visit);
            }
        }
    }
}

fn visit_cond(cond: &Cond, visit: &mut impl FnMut(Item)) {
    match cond {
        Cond::InBounds(..) => {}
        Cond::Cmp(_, a, b) => {
            visit_expr(a, visit);
            visit_expr(b, visit);
        }
        Cond::And(a, b) => {
            visit_cond(a, visit);
            visit_cond(b, visit);
        }
    }
}

fn visit_expr(expr: &Expr, visit: &mut impl FnMut(Item)) {
    match expr {
        Expr::Const(_) | Expr::IndexValue(_) => {}
        Expr::Load(buf, _) => visit(Item::Buffer(*buf)),
        Expr::Local(local) => visit(Item::Local(*local)),
        Expr::Unary(_, a) => visit_expr(a, visit),
        Expr::Binary(_, a, b) => {
            visit_expr(a, visit);
            visit_expr(b, visit);
        }
        Expr::Fma(a, b, c) => {
            visit_expr(a, visit);
            visit_expr(b, visit);
            visit_expr(c, visit);
        }
        Expr::Select(cond, a, b) => {
            visit_cond(cond, visit);
            visit_expr(a, visit);
            visit_expr(b, visit);
        }
    }
}
