//! Expressions of a blocked contraction nest at one output of a block ([`Site`]): lane-wise
//! in `f32x4` where the scalar rounding has a lane-wise form, otherwise lane by lane with the
//! scalar code (see `emit.rs`). `Local(acc)` reads that output's sum.

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, InstBuilder, MemFlagsData, Value};

use super::super::translate::{float_cc, Translator};
use super::super::vector::{lane_bitcast_flags, vector_flags};
use super::emit::{Frame, Site, LANES};
use super::{coefficients, cond_depends_on, depends_on, Contraction};
use crate::lower::loops::{BufId, Cond, Expr, Index, Var};

impl Translator<'_> {
    /// The `i64` value of `index` at row `u` and lane `lane` of the block.
    fn index_value(&mut self, frame: &Frame, index: &Index, u: i64, lane: i64) -> Value {
        let coeffs = coefficients(index);
        let mut constant = index.offset;
        let mut sum = None;
        for (&var, &coeff) in &coeffs {
            match frame.row {
                Some((row, _)) if row == var => constant = constant.wrapping_add(coeff * u),
                _ if frame.lane.0 == var => constant = constant.wrapping_add(coeff * lane),
                _ => {}
            }
            let value = self.var_value(frame, var);
            let scaled = self.builder.ins().imul_imm_s(value, coeff);
            sum = Some(match sum {
                None => scaled,
                Some(sum) => self.builder.ins().iadd(sum, scaled),
            });
        }
        match sum {
            None => self.builder.ins().iconst(types::I64, constant),
            Some(sum) => self.builder.ins().iadd_imm_s(sum, constant),
        }
    }

    /// `flags` for a load of `buf` in the nest, marked `readonly` and `can_move` when the piece
    /// never writes `buf`. Cranelift then treats the load as a pure value and emits it where
    /// it is used: without that, every load of a reduction step came first and the sums'
    /// `fma`s after them, and with 8 sums and 10 operands live at once (conv1's weight
    /// gradient) two sums spilled to the stack inside the loop. Such a load may also be
    /// hoisted out of a loop whose iterations do not change its address; its address is
    /// then one an iteration computes from the same values, in bounds (`bounds.rs` proves
    /// every access for all values of the loop variables).
    fn operand_flags(&self, buf: BufId, flags: MemFlagsData) -> MemFlagsData {
        if self.read_only[buf.0 as usize] {
            flags.with_readonly().with_can_move()
        } else {
            flags
        }
    }

    /// `expr` at `site` (an `f32x4` or an `f32`), with `acc` the site's sum (epilogue only).
    pub(super) fn eval(
        &mut self,
        nest: &Contraction,
        frame: &mut Frame,
        expr: &Expr,
        acc: Option<Value>,
        site: Site,
    ) -> Value {
        if site.width == 1 {
            return self.eval_lane(nest, frame, expr, acc, site.u, site.lane);
        }
        if !depends_on(expr, nest.lane_var()) {
            let scalar = self.eval_lane(nest, frame, expr, None, site.u, site.lane);
            return self.builder.ins().splat(types::F32X4, scalar);
        }
        match expr {
            Expr::Load(buf, index) if coefficients(index).get(&nest.lane_var()) == Some(&1) => {
                let (address, offset) = self.address(nest, frame, *buf, index, site.u, site.lane);
                let flags = self.operand_flags(*buf, vector_flags());
                self.builder
                    .ins()
                    .load(types::F32X4, flags, address, offset)
            }
            Expr::Local(_) => acc.expect("only the epilogue reads a local: the sum"),
            // exp and ln included: math.rs emits the same instructions for f32 and f32x4.
            Expr::Unary(..) | Expr::Binary(..) | Expr::Fma(..) => {
                self.translate_arithmetic(expr, &mut |t, e| t.eval(nest, frame, e, acc, site))
            }
            Expr::Select(cond, a, b) if !lane_dependent_guard(cond, nest.lane_var()) => {
                let mask = self.vector_cond(nest, frame, cond, acc, site);
                let a = self.eval(nest, frame, a, acc, site);
                let b = self.eval(nest, frame, b, acc, site);
                let mask = self
                    .builder
                    .ins()
                    .bitcast(types::F32X4, lane_bitcast_flags(), mask);
                self.builder.ins().bitselect(mask, a, b)
            }
            _ => self.eval_lanewise(nest, frame, expr, acc, site),
        }
    }

    /// `expr` computed lane by lane with the scalar code, gathered into an `f32x4`.
    fn eval_lanewise(
        &mut self,
        nest: &Contraction,
        frame: &mut Frame,
        expr: &Expr,
        acc: Option<Value>,
        site: Site,
    ) -> Value {
        let mut vector = None;
        for k in 0..LANES {
            let lane_acc = acc.map(|acc| self.builder.ins().extractlane(acc, k as u8));
            let scalar = self.eval_lane(nest, frame, expr, lane_acc, site.u, site.lane + k);
            vector = Some(match vector {
                None => self.builder.ins().splat(types::F32X4, scalar),
                Some(v) => self.builder.ins().insertlane(v, scalar, k as u8),
            });
        }
        vector.expect("four lanes")
    }

    /// An `i32x4` lane mask of `cond`, which has no lane-dependent `InBounds`.
    fn vector_cond(
        &mut self,
        nest: &Contraction,
        frame: &mut Frame,
        cond: &Cond,
        acc: Option<Value>,
        site: Site,
    ) -> Value {
        if !cond_depends_on(cond, nest.lane_var()) {
            let holds = self.cond_lane(nest, frame, cond, None, site.u, site.lane);
            let ones = self.builder.ins().iconst(types::I32, -1);
            let ones = self.builder.ins().splat(types::I32X4, ones);
            let zeros = self.builder.ins().iconst(types::I32, 0);
            let zeros = self.builder.ins().splat(types::I32X4, zeros);
            return self.builder.ins().select(holds, ones, zeros);
        }
        match cond {
            Cond::InBounds(..) => unreachable!("lane-dependent guards are evaluated lane-wise"),
            Cond::Cmp(op, a, b) => {
                let a = self.eval(nest, frame, a, acc, site);
                let b = self.eval(nest, frame, b, acc, site);
                self.builder.ins().fcmp(float_cc(*op), a, b)
            }
            Cond::And(a, b) => {
                let a = self.vector_cond(nest, frame, a, acc, site);
                let b = self.vector_cond(nest, frame, b, acc, site);
                self.builder.ins().band(a, b)
            }
        }
    }

    /// The scalar `f32` of `expr` at row `u`, lane `lane` of the block (`acc`: that output's sum).
    fn eval_lane(
        &mut self,
        nest: &Contraction,
        frame: &mut Frame,
        expr: &Expr,
        acc: Option<Value>,
        u: i64,
        lane: i64,
    ) -> Value {
        match expr {
            Expr::Const(c) => self.builder.ins().f32const(*c),
            Expr::Load(buf, index) => {
                let (address, offset) = self.address(nest, frame, *buf, index, u, lane);
                let flags = self.operand_flags(*buf, MemFlagsData::trusted());
                self.builder.ins().load(types::F32, flags, address, offset)
            }
            Expr::Local(_) => acc.expect("only the epilogue reads a local: the sum"),
            Expr::IndexValue(index) => {
                let value = self.index_value(frame, index, u, lane);
                self.builder.ins().fcvt_from_sint(types::F32, value)
            }
            Expr::Unary(..) | Expr::Binary(..) | Expr::Fma(..) => self
                .translate_arithmetic(expr, &mut |t, e| t.eval_lane(nest, frame, e, acc, u, lane)),
            Expr::Select(cond, a, b) => {
                let holds = self.cond_lane(nest, frame, cond, acc, u, lane);
                let a = self.eval_lane(nest, frame, a, acc, u, lane);
                let b = self.eval_lane(nest, frame, b, acc, u, lane);
                self.builder.ins().select(holds, a, b)
            }
        }
    }

    /// An `i8` that is 1 when `cond` holds at row `u`, lane `lane` of the block.
    fn cond_lane(
        &mut self,
        nest: &Contraction,
        frame: &mut Frame,
        cond: &Cond,
        acc: Option<Value>,
        u: i64,
        lane: i64,
    ) -> Value {
        match cond {
            Cond::InBounds(index, bound) => {
                // 0 <= i < n as one unsigned comparison, as the scalar translation does.
                let value = self.index_value(frame, index, u, lane);
                self.builder
                    .ins()
                    .icmp_imm_s(IntCC::UnsignedLessThan, value, *bound)
            }
            Cond::Cmp(op, a, b) => {
                let a = self.eval_lane(nest, frame, a, acc, u, lane);
                let b = self.eval_lane(nest, frame, b, acc, u, lane);
                self.builder.ins().fcmp(float_cc(*op), a, b)
            }
            Cond::And(a, b) => {
                let a = self.cond_lane(nest, frame, a, acc, u, lane);
                let b = self.cond_lane(nest, frame, b, acc, u, lane);
                self.builder.ins().band(a, b)
            }
        }
    }
}

/// Whether `cond` has an `InBounds` guard (or an index value) that varies along `lane`: such a
/// `Select` is evaluated lane-wise.
fn lane_dependent_guard(cond: &Cond, lane: Var) -> bool {
    super::any_cond_index(cond, &mut |buf, index| {
        buf.is_none() && coefficients(index).contains_key(&lane)
    })
}
