//! Emission of a recognised [`Contraction`] as register-blocked code.
//!
//! The rows run in blocks of `U`, then one by one (a runtime range `[start, end)`, so a parallel
//! rows loop's thread range works); within each, the lanes (a constant extent `J`) run as
//! blocks of `V` vectors of 4 lanes, then one block of the remaining whole vectors, then one
//! block of the remaining (< 4) lanes as scalars. A block of `U × V` outputs is: `init` into one
//! accumulator (a [`Variable`]) per output, the reduction loops with one `fma` per output per
//! step (the innermost loop unrolled by [`UNROLL`]), then the epilogue and the store of each
//! output.
//!
//! Per reduction step, an operand is evaluated once per distinct (row, vector) it depends on:
//! a load with coefficient 1 on the lanes variable is one vector load, 0 is a scalar load and
//! a splat, anything else a gather of 4 scalar loads; an operand that does not depend on the
//! row is shared by the block's rows. Addresses are computed once per block outside the
//! reduction loops (`base + 4·Σ coeff·var` over the other variables, with the block's first row
//! and lane), plus, per step, only the reduction variables' terms; each output's own row and
//! lane are a constant displacement folded into the load.
//!
//! Expressions are evaluated by `eval.rs`. What has no lane-wise form with the scalar rounding
//! (`exp`, `ln`, an `IndexValue` or an `InBounds` that varies along the lanes) is evaluated
//! lane by lane with the scalar code and inserted into the vector, so every expression is
//! supported and bitwise unchanged.

use std::collections::HashMap;

use cranelift_codegen::ir::{types, InstBuilder, MemFlagsData, Value};
use cranelift_frontend::Variable;

use super::super::translate::Translator;
use super::super::vector::vector_flags;
use super::{coefficients, contraction, depends_on, local_uses, Contraction};
use crate::lower::loops::{BufId, Expr, Index, Loop, Var};

/// Lanes of an `f32x4`.
pub(super) const LANES: i64 = 4;

/// Accumulators of a full block (`U × V`). The x64 backend ties `fma`'s destination to a
/// multiplicand and has 16 vector registers; with 8 accumulators plus the operands of one
/// step nothing spills (issue 7 measured spills from 12 on). See `rows_per_block`.
const ACCUMULATORS: i64 = 8;

/// Steps of the innermost reduction loop per iteration (the rest, `extent % UNROLL`, after the
/// loop as straight code).
///
/// Unrolled by 2, each accumulator is written twice an iteration, so the register allocator
/// can give the second `fma` (whose result x64 places in a multiplicand's register) the
/// register the loop carries the sum in: of the 8 register moves a step on the back edge, 5
/// per two steps remain (the sums rotate; `CNNC_DISASM=dense1.backward_input`), and a 4×2
/// block takes 28 instructions per 8 `fma`s instead of 35. Measured on LeNet b256, 1 thread,
/// 2026-12-02, on the Intel host, alternating:
/// training 11.8–11.9k → 13.8k img/s (unroll 3: 13.2–13.3k, 4: 12.6k; the innermost loop of
/// ≤ 5 steps fully unrolled: 12.9–13.3k); dense kernels 37–38 → 50–53 GFLOP/s; ResNet-18 b4
/// on 2 threads 16.0 → 17.8 img/s training, NiN 9.3 → 10.5.
const UNROLL: usize = 2;

/// Rows of a full block for `lanes` lanes: 4 rows × 2 vectors when there are 8 lanes or more,
/// 8 × 1 for 4..7 lanes, and `8 / lanes` rows of scalars below 4 lanes.
///
/// Measured with `blocked/bench.rs` (one thread, 2026-11-25, on a machine at load ~11 on 2
/// cores, so ±50% noise), GFLOP/s for dense 256×400·400×120 / conv2 forward / conv2 dW:
/// 4×2: 29–32 / 13–14 / 11–25; 2×4: 29–30 / 9–26 / 13–14; 3×2: 14 / 10 / 9; 8×1: 16 / 5 / 7;
/// 4×3 (12 accumulators): 23 / 8 / 8; 4×4: 20 / 8 / 5. Beyond 8 accumulators it spills.
fn rows_per_block(lanes: i64) -> i64 {
    match lanes / LANES {
        0 => (ACCUMULATORS / lanes).max(1),
        1 => ACCUMULATORS,
        _ => ACCUMULATORS / 2,
    }
}

/// One output of a block: row `u` after the block's first, lanes from `lane` after its first.
#[derive(Clone, Copy)]
pub(super) struct Site {
    pub(super) u: i64,
    pub(super) lane: i64,
    /// 4 (an `f32x4`) or 1 (an `f32`).
    pub(super) width: i64,
}

/// An index's coefficients, sorted by variable.
type Terms = Vec<(Var, i64)>;

/// Address terms: a buffer and (some of) its index's coefficients.
type AddressKey = (BufId, Terms);

/// `var`'s coefficient in an address key (0 when it has none).
fn coefficient(key: &AddressKey, var: Var) -> i64 {
    key.1.iter().find(|(v, _)| *v == var).map_or(0, |t| t.1)
}

/// Where the current block is, and the addresses computed for it.
pub(super) struct Frame {
    /// The rows variable and the block's first row, when there is a rows loop.
    pub(super) row: Option<(Var, Value)>,
    /// The lanes variable and the block's first lane.
    pub(super) lane: (Var, Value),
    /// `base + 4·Σ coeff·var` without the reduction variables' terms, by buffer and those
    /// terms; computed before the reduction loops, so they dominate the whole block.
    bases: HashMap<AddressKey, Value>,
    /// The same with the reduction terms, at the current reduction step: pointers stepped by
    /// each reduction loop (strength-reduced: `imul` has one port and was the limit).
    steps: HashMap<AddressKey, Value>,
}

impl Contraction<'_> {
    /// What `a` (or `b`) at `site` is evaluated once for: its row and lane group, each only if
    /// the operand depends on it (-1 otherwise).
    fn operand_key(&self, is_b: bool, site: Site) -> (bool, i64, i64) {
        let expr = if is_b { self.b } else { self.a };
        let by_row = self.row_var().is_some_and(|v| depends_on(expr, v));
        let by_lane = depends_on(expr, self.lane_var());
        (
            is_b,
            if by_row { site.u } else { -1 },
            if by_lane { site.lane } else { -1 },
        )
    }
}

impl Translator<'_> {
    /// Translates `lp` register-blocked when it is a [`contraction`] that can be blocked here,
    /// and says whether it did. A lanes loop with a runtime range (a kernel's top-level
    /// parallel loop without a rows loop) is left to the plain translation.
    pub(in crate::jit) fn try_translate_contraction(
        &mut self,
        lp: &Loop,
        start: Value,
        end: Value,
        runtime_range: bool,
    ) -> bool {
        let Some(nest) = contraction(lp) else {
            return false;
        };
        let acc = nest.acc.0 as usize;
        let uses_in_nest = local_uses(&lp.body, self.local_uses.len() as u32)[acc];
        if self.local_uses[acc] != uses_in_nest || (nest.rows.is_none() && runtime_range) {
            return false;
        }
        match nest.rows {
            None => self.translate_row_block(&nest, None, 1),
            Some(rows) => {
                let var = self.vars[rows.var.0 as usize];
                self.builder.def_var(var, start);
                let full = rows_per_block(nest.lanes.extent as i64);
                // Full blocks of rows, then the rest in halving blocks (5 remaining rows of 8
                // run as 4 + 1, not as 5 single rows, each a lone FMA chain per lane group).
                let steps: Vec<i64> =
                    std::iter::successors(Some(full), |&s| (s > 1).then_some(s / 2)).collect();
                for step in steps {
                    let (body, exit) = self.begin_loop(var, step, end);
                    let first_row = self.builder.use_var(var);
                    self.translate_row_block(&nest, Some((rows.var, first_row)), step);
                    self.end_loop(var, step, end, body, exit);
                }
            }
        }
        true
    }

    /// `u` rows (from `row`) across all the lanes: full blocks, then the vector and lane tails.
    fn translate_row_block(&mut self, nest: &Contraction, row: Option<(Var, Value)>, u: i64) {
        let lanes = nest.lanes.extent as i64;
        let var = nest.lane_var();
        let vectors = lanes / LANES;
        let per_block = (ACCUMULATORS / u).clamp(1, vectors.max(1));
        let mut done = 0;
        if vectors >= per_block {
            let lane_var = self.vars[var.0 as usize];
            let zero = self.builder.ins().iconst(types::I64, 0);
            self.builder.def_var(lane_var, zero);
            let end = self.builder.ins().iconst(types::I64, lanes);
            let (body, exit) = self.begin_loop(lane_var, per_block * LANES, end);
            let first_lane = self.builder.use_var(lane_var);
            self.translate_block(nest, row, (var, first_lane), u, per_block, LANES);
            self.end_loop(lane_var, per_block * LANES, end, body, exit);
            done = vectors / per_block * per_block * LANES;
        }
        let tails = [((lanes - done) / LANES, LANES), (lanes % LANES, 1)];
        for (groups, width) in tails {
            if groups > 0 {
                let first_lane = self.builder.ins().iconst(types::I64, done);
                self.translate_block(nest, row, (var, first_lane), u, groups, width);
                done += groups * width;
            }
        }
    }

    /// One block: `rows × groups` outputs of `width` lanes each.
    fn translate_block(
        &mut self,
        nest: &Contraction,
        row: Option<(Var, Value)>,
        lane: (Var, Value),
        rows: i64,
        groups: i64,
        width: i64,
    ) {
        let mut frame = Frame {
            row,
            lane,
            bases: HashMap::new(),
            steps: HashMap::new(),
        };
        self.prepare_bases(nest, &mut frame);
        let ty = if width == LANES {
            types::F32X4
        } else {
            types::F32
        };
        let sites: Vec<Site> = (0..rows)
            .flat_map(|u| {
                (0..groups).map(move |g| Site {
                    u,
                    lane: g * width,
                    width,
                })
            })
            .collect();
        let accs: Vec<Variable> = sites
            .iter()
            .map(|&site| {
                let acc = self.builder.declare_var(ty);
                let init = self.eval(nest, &mut frame, nest.init, None, site);
                self.builder.def_var(acc, init);
                acc
            })
            .collect();

        if nest.reductions.iter().all(|r| r.extent > 0) {
            let stepped = self.stepped_accesses(nest, &frame);
            let mut pointers: Vec<Value> = stepped.iter().map(|(_, base)| *base).collect();
            let (innermost, outer) = nest.reductions.split_last().expect("a contraction reduces");
            // The loops emitted, with their steps: the innermost one only when it has at
            // least one full iteration of `UNROLL` steps (else its single step is inlined).
            let unrolled = innermost.extent >= UNROLL;
            let looped: Vec<(i64, &Loop)> = outer
                .iter()
                .map(|r| (1, *r))
                .chain(unrolled.then_some((UNROLL as i64, *innermost)))
                .collect();
            let mut loops = Vec::with_capacity(looped.len());
            for &(step, r) in &looped {
                let var = self.vars[r.var.0 as usize];
                let zero = self.builder.ins().iconst(types::I64, 0);
                self.builder.def_var(var, zero);
                let slots: Vec<Variable> = pointers
                    .iter()
                    .map(|&pointer| {
                        let slot = self.builder.declare_var(types::I64);
                        self.builder.def_var(slot, pointer);
                        slot
                    })
                    .collect();
                let end = self.builder.ins().iconst(types::I64, r.extent as i64);
                let (body, exit) = self.begin_loop(var, step, end);
                pointers = slots
                    .iter()
                    .map(|&slot| self.builder.use_var(slot))
                    .collect();
                loops.push((r.var, step, var, slots, end, body, exit));
            }
            // The body: `UNROLL` steps, each at its constant displacement from the stepped
            // pointers (or the innermost loop's single step when it is not looped).
            let body_steps = if unrolled {
                UNROLL
            } else {
                let zero = self.builder.ins().iconst(types::I64, 0);
                self.builder
                    .def_var(self.vars[innermost.var.0 as usize], zero);
                innermost.extent
            };
            for k in 0..body_steps as i64 {
                self.emit_step(
                    nest,
                    &mut frame,
                    &stepped,
                    &pointers,
                    (innermost.var, k),
                    (&sites, &accs),
                );
            }
            for (reduction, step, var, slots, end, body, exit) in loops.into_iter().rev() {
                for ((key, _), slot) in stepped.iter().zip(&slots) {
                    let coeff = coefficient(key, reduction);
                    if coeff != 0 {
                        let pointer = self.builder.use_var(*slot);
                        let bytes = coeff.wrapping_mul(4).wrapping_mul(step);
                        let next = self.builder.ins().iadd_imm_s(pointer, bytes);
                        self.builder.def_var(*slot, next);
                    }
                }
                self.end_loop(var, step, end, body, exit);
                if reduction == innermost.var {
                    // The steps the unrolled loop left, at the pointers where it stopped.
                    let at: Vec<Value> = slots.iter().map(|&s| self.builder.use_var(s)).collect();
                    for k in 0..(innermost.extent % UNROLL) as i64 {
                        self.emit_step(
                            nest,
                            &mut frame,
                            &stepped,
                            &at,
                            (reduction, k),
                            (&sites, &accs),
                        );
                    }
                }
            }
        }

        // An epilogue beyond the bare sum (an activation: sigmoid's exp and divide) needs
        // registers of its own while the other sums wait; with all of them live, the register
        // allocator spilled some of the sums *inside the reduction loop* (a store and reload per
        // step on their chains: LeNet's `dense1.forward` with its sigmoid ran 2.2× slower than
        // without, 2026-11-30, seen in the disassembly). So the sums are stored first, ending
        // their live ranges at the loop's exit, and each is read back for its epilogue alone.
        // The stored bits are the sums', so the result is the same.
        let unit = coefficients(nest.o).get(&nest.lane_var()) == Some(&1);
        let staged = !matches!(nest.epilogue, Expr::Local(_)) && width == LANES && unit;
        for (&site, &acc) in sites.iter().zip(&accs) {
            let sum = self.builder.use_var(acc);
            if staged {
                self.store_output(nest, &mut frame, site, sum);
            } else {
                let value = self.eval(nest, &mut frame, nest.epilogue, Some(sum), site);
                self.store_output(nest, &mut frame, site, value);
            }
        }
        if staged {
            for &site in &sites {
                let (address, offset) =
                    self.address(nest, &mut frame, nest.out, nest.o, site.u, site.lane);
                let sum = self
                    .builder
                    .ins()
                    .load(types::F32X4, vector_flags(), address, offset);
                let value = self.eval(nest, &mut frame, nest.epilogue, Some(sum), site);
                self.store_output(nest, &mut frame, site, value);
            }
        }
    }

    /// One step of the reduction: an `fma` per output (`sites`, summing into `accs`), the
    /// operands read at `pointers` (those of `stepped`) moved `k` steps along `var`.
    fn emit_step(
        &mut self,
        nest: &Contraction,
        frame: &mut Frame,
        stepped: &[(AddressKey, Value)],
        pointers: &[Value],
        (var, k): (Var, i64),
        (sites, accs): (&[Site], &[Variable]),
    ) {
        // Conditions and index values read `var` itself: it is `k` further on in this step.
        let variable = self.vars[var.0 as usize];
        let position = self.builder.use_var(variable);
        if k != 0 {
            let moved = self.builder.ins().iadd_imm_s(position, k);
            self.builder.def_var(variable, moved);
        }
        frame.steps = stepped
            .iter()
            .zip(pointers)
            .map(|((key, _), &pointer)| {
                let bytes = coefficient(key, var).wrapping_mul(4).wrapping_mul(k);
                let at = if bytes == 0 {
                    pointer
                } else {
                    self.builder.ins().iadd_imm_s(pointer, bytes)
                };
                (key.clone(), at)
            })
            .collect();
        // x64's `fma` overwrites its first multiplicand (Cranelift 0.135 emits only the
        // forms that tie the destination to one), so an operand other sites still use is
        // copied first. Putting first the operand this site uses last saves that copy
        // (conv1's weight gradient shares each `dy` vector across 4 rows: it would take 6
        // copies a step). `a·b` and `b·a` round the same, so the sums are unchanged.
        let mut remaining: HashMap<(bool, i64, i64), usize> = HashMap::new();
        for &site in sites {
            for is_b in [false, true] {
                *remaining.entry(nest.operand_key(is_b, site)).or_default() += 1;
            }
        }
        let mut operands: HashMap<(bool, i64, i64), Value> = HashMap::new();
        for (&site, &acc) in sites.iter().zip(accs) {
            let a = self.operand(nest, frame, &mut operands, false, site);
            let b = self.operand(nest, frame, &mut operands, true, site);
            let mut left = |is_b| {
                let count = remaining
                    .get_mut(&nest.operand_key(is_b, site))
                    .expect("counted above");
                *count -= 1;
                *count
            };
            let (a_left, b_left) = (left(false), left(true));
            let (first, second) = if a_left > 0 && b_left == 0 {
                (b, a)
            } else {
                (a, b)
            };
            let sum = self.builder.use_var(acc);
            let sum = self.builder.ins().fma(first, second, sum);
            self.builder.def_var(acc, sum);
        }
        self.builder.def_var(variable, position);
    }

    /// `a` (or `b`) at `site`, evaluated once per distinct row and lane group it depends on.
    fn operand(
        &mut self,
        nest: &Contraction,
        frame: &mut Frame,
        cache: &mut HashMap<(bool, i64, i64), Value>,
        is_b: bool,
        site: Site,
    ) -> Value {
        let expr = if is_b { nest.b } else { nest.a };
        let key = nest.operand_key(is_b, site);
        if let Some(&value) = cache.get(&key) {
            return value;
        }
        let value = self.eval(nest, frame, expr, None, site);
        cache.insert(key, value);
        value
    }

    /// Computes, at the block's start, the base address of every buffer access of the nest.
    fn prepare_bases(&mut self, nest: &Contraction, frame: &mut Frame) {
        let mut accesses = vec![(nest.out, nest.o.clone())];
        for expr in [nest.init, nest.a, nest.b, nest.epilogue] {
            super::any_index(expr, &mut |buf, index| {
                if let Some(buf) = buf {
                    accesses.push((buf, index.clone()));
                }
                false
            });
        }
        for (buf, index) in accesses {
            let outer: Terms = coefficients(&index)
                .into_iter()
                .filter(|(v, _)| !nest.is_reduction(*v))
                .collect();
            if frame.bases.contains_key(&(buf, outer.clone())) {
                continue;
            }
            let mut address = self.bases[buf.0 as usize].expect("used_buffers lists every buffer");
            for &(var, coeff) in &outer {
                let value = self.var_value(frame, var);
                let scaled = self.builder.ins().imul_imm_s(value, coeff.wrapping_mul(4));
                address = self.builder.ins().iadd(address, scaled);
            }
            frame.bases.insert((buf, outer), address);
        }
    }

    /// The operands' accesses that move with a reduction variable, each with its base address
    /// (the reduction variables at 0): the pointers the reduction loops step.
    fn stepped_accesses(&mut self, nest: &Contraction, frame: &Frame) -> Vec<(AddressKey, Value)> {
        let mut stepped: Vec<(AddressKey, Value)> = Vec::new();
        for expr in [nest.a, nest.b] {
            super::any_index(expr, &mut |buf, index| {
                let Some(buf) = buf else { return false };
                let coeffs = coefficients(index);
                if !coeffs.keys().any(|v| nest.is_reduction(*v)) {
                    return false;
                }
                let key: AddressKey = (buf, coeffs.iter().map(|(&v, &c)| (v, c)).collect());
                if stepped.iter().all(|(k, _)| *k != key) {
                    let outer: Terms = key
                        .1
                        .iter()
                        .copied()
                        .filter(|(v, _)| !nest.is_reduction(*v))
                        .collect();
                    stepped.push((key, frame.bases[&(buf, outer)]));
                }
                false
            });
        }
        stepped
    }

    /// A loop variable's value in the block: the first row or lane for those, else its own.
    pub(super) fn var_value(&mut self, frame: &Frame, var: Var) -> Value {
        match frame.row {
            Some((row, first)) if row == var => first,
            _ if frame.lane.0 == var => frame.lane.1,
            _ => self.builder.use_var(self.vars[var.0 as usize]),
        }
    }

    /// `(address, displacement)` of `buf[index]` at row `u` and lane `lane` of the block.
    pub(super) fn address(
        &mut self,
        nest: &Contraction,
        frame: &mut Frame,
        buf: BufId,
        index: &Index,
        u: i64,
        lane: i64,
    ) -> (Value, i32) {
        let coeffs = coefficients(index);
        let (reduction, outer): (Terms, Terms) = coeffs
            .iter()
            .map(|(&v, &c)| (v, c))
            .partition(|(v, _)| nest.is_reduction(*v));
        let base = frame.bases[&(buf, outer)];
        let address = if reduction.is_empty() {
            base
        } else {
            let key = (buf, coeffs.iter().map(|(&v, &c)| (v, c)).collect());
            match frame.steps.get(&key) {
                Some(&pointer) => pointer,
                // Not an operand (init and epilogue use no reduction variable): computed here.
                None => {
                    let mut address = base;
                    for (var, coeff) in reduction {
                        let value = self.builder.use_var(self.vars[var.0 as usize]);
                        let scaled = self.builder.ins().imul_imm_s(value, coeff.wrapping_mul(4));
                        address = self.builder.ins().iadd(address, scaled);
                    }
                    address
                }
            }
        };
        let row_coeff = frame.row.and_then(|(v, _)| coeffs.get(&v).copied());
        let lane_coeff = coeffs.get(&frame.lane.0).copied().unwrap_or(0);
        let element = index
            .offset
            .wrapping_add(row_coeff.unwrap_or(0).wrapping_mul(u))
            .wrapping_add(lane_coeff.wrapping_mul(lane));
        let bytes = element.wrapping_mul(4);
        match i32::try_from(bytes) {
            Ok(offset) => (address, offset),
            Err(_) => (self.builder.ins().iadd_imm_s(address, bytes), 0),
        }
    }

    /// Stores the output at `site`: one vector store when `o` has unit stride in the lanes.
    fn store_output(&mut self, nest: &Contraction, frame: &mut Frame, site: Site, value: Value) {
        let unit = coefficients(nest.o).get(&nest.lane_var()) == Some(&1);
        if site.width == LANES && unit {
            let (address, offset) = self.address(nest, frame, nest.out, nest.o, site.u, site.lane);
            self.builder
                .ins()
                .store(vector_flags(), value, address, offset);
            return;
        }
        for k in 0..site.width {
            let scalar = if site.width == 1 {
                value
            } else {
                self.builder.ins().extractlane(value, k as u8)
            };
            let (address, offset) =
                self.address(nest, frame, nest.out, nest.o, site.u, site.lane + k);
            self.builder
                .ins()
                .store(MemFlagsData::trusted(), scalar, address, offset);
        }
    }
}
