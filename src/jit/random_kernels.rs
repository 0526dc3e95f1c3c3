//! Random kernels, JIT against `lower::interp` (the oracle), on 1, 2 and 3 threads.
//!
//! Each kernel is a sequential initialisation, a top-level loop over rows (parallel or not)
//! holding random nested loops, guards, stores, accumulations, locals and expressions of every
//! construct, and a sequential reduction over everything written. Accesses are in bounds by
//! construction (some only thanks to their `InBounds` guard, which the bounds checker must
//! see), and each row iteration writes only its own row of the outputs, as the loop IR
//! requires of parallel loops. `Exp` and `Ln` are left out: their polynomials differ from
//! Rust's functions by design and are checked in `math.rs`; everything else must agree
//! exactly (`==`, so that `-0.0` and `0.0` agree).

use super::{Buffers, CompileOptions, Compiled};
use crate::lower::interp;
use crate::lower::loops::{
    BinOp, BufId, CmpOp, Cond, Expr, Index, Kernel, Local, Loop, Stmt, UnOp, Var,
};

const INPUTS: [BufId; 2] = [BufId(0), BufId(1)];
const INPUT_LEN: usize = 37;
const OUTPUTS: [BufId; 2] = [BufId(2), BufId(3)];
/// Elements per row of an output.
const ROW: usize = 12;
/// One element: the sum of everything written, by the final sequential piece.
const TOTAL: BufId = BufId(4);
const ROW_VAR: Var = Var(0);

/// SplitMix64: a fixed, seedable sequence, so a failure is reproduced by its seed.
pub(super) struct Rng(pub(super) u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub(super) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub(super) fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo + 1) as usize) as i64
    }

    pub(super) fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    pub(super) fn value(&mut self) -> f32 {
        self.range(-40, 40) as f32 / 8.0 + 0.0625
    }
}

struct Generator {
    rng: Rng,
    rows: usize,
    /// Loop variables in scope inside the row loop, with their extents (the row variable first).
    scope: Vec<(Var, usize)>,
    next_var: u32,
    locals: u32,
}

impl Generator {
    fn kernel(&mut self, seed: u64) -> Kernel {
        let out_len = (self.rows * ROW) as i64;
        let every = |var: u32| Index {
            terms: vec![(Var(var), 1)],
            offset: 0,
        };
        let init = Stmt::Loop(Loop {
            var: Var(1),
            extent: self.rows * ROW,
            parallel: false,
            body: OUTPUTS
                .iter()
                .map(|&out| Stmt::Store(out, every(1), Expr::Const(self.rng.value())))
                .collect(),
        });
        self.scope = vec![(ROW_VAR, self.rows)];
        // Every local is assigned before any read in each row, so rows stay independent.
        let mut row_body: Vec<Stmt> = (0..self.locals)
            .map(|l| Stmt::Let(Local(l), self.expr(2, false)))
            .collect();
        row_body.extend(self.stmts(0));
        let rows = Stmt::Loop(Loop {
            var: ROW_VAR,
            extent: self.rows,
            parallel: self.rng.chance(70),
            body: row_body,
        });
        let total = Stmt::Loop(Loop {
            var: Var(1),
            extent: out_len as usize,
            parallel: false,
            body: OUTPUTS
                .iter()
                .map(|&out| Stmt::Accumulate(TOTAL, Index::default(), Expr::Load(out, every(1))))
                .collect(),
        });
        Kernel {
            name: format!("random{seed}"),
            vars: self.next_var,
            locals: self.locals,
            body: vec![init, rows, total],
        }
    }

    fn stmts(&mut self, depth: usize) -> Vec<Stmt> {
        (0..1 + self.rng.below(3))
            .map(|_| self.stmt(depth))
            .collect()
    }

    fn stmt(&mut self, depth: usize) -> Stmt {
        let out = OUTPUTS[self.rng.below(2)];
        match self.rng.below(if depth < 3 { 7 } else { 4 }) {
            0 => Stmt::Store(out, self.row_index(), self.expr(3, true)),
            1 => Stmt::Accumulate(out, self.row_index(), self.expr(3, true)),
            2 if self.locals > 0 => Stmt::Let(
                Local(self.rng.below(self.locals as usize) as u32),
                self.expr(3, true),
            ),
            2 | 3 => {
                // A load that is in bounds only where its guard holds (padding-like).
                let index = self.any_index();
                let guarded =
                    Stmt::Store(out, self.row_index(), Expr::Load(INPUTS[0], index.clone()));
                Stmt::If(Cond::InBounds(index, INPUT_LEN as i64), vec![guarded])
            }
            4 | 5 => {
                let var = Var(self.next_var);
                self.next_var += 1;
                let extent = self.rng.below(5);
                self.scope.push((var, extent));
                let body = self.stmts(depth + 1);
                self.scope.pop();
                Stmt::Loop(Loop {
                    var,
                    extent,
                    parallel: false,
                    body,
                })
            }
            _ => {
                let cond = self.cond(2, true);
                Stmt::If(cond, self.stmts(depth + 1))
            }
        }
    }

    fn expr(&mut self, depth: usize, locals: bool) -> Expr {
        let boxed = |g: &mut Self, depth| Box::new(g.expr(depth, locals));
        if depth == 0 || self.rng.chance(25) {
            return match self.rng.below(5) {
                0 => Expr::Const(self.rng.value()),
                1 => Expr::Load(INPUTS[self.rng.below(2)], self.fitting_index(INPUT_LEN)),
                2 => Expr::Load(OUTPUTS[self.rng.below(2)], self.row_index()),
                3 if locals && self.locals > 0 => {
                    Expr::Local(Local(self.rng.below(self.locals as usize) as u32))
                }
                _ => Expr::IndexValue(self.any_index()),
            };
        }
        let d = depth - 1;
        match self.rng.below(11) {
            0 => Expr::Unary(UnOp::Neg, boxed(self, d)),
            1 => Expr::Unary(UnOp::Abs, boxed(self, d)),
            2 => Expr::Unary(UnOp::Sqrt, Box::new(Expr::Unary(UnOp::Abs, boxed(self, d)))),
            3 => {
                // A denominator of at least 1 keeps every value finite.
                let denominator = Expr::Binary(
                    BinOp::Add,
                    Box::new(Expr::Unary(UnOp::Abs, boxed(self, d))),
                    Box::new(Expr::Const(1.0)),
                );
                Expr::Binary(BinOp::Div, boxed(self, d), Box::new(denominator))
            }
            4..=8 => {
                let op =
                    [BinOp::Add, BinOp::Sub, BinOp::Mul, BinOp::Max, BinOp::Min][self.rng.below(5)];
                Expr::Binary(op, boxed(self, d), boxed(self, d))
            }
            9 => Expr::Fma(boxed(self, d), boxed(self, d), boxed(self, d)),
            _ => Expr::Select(
                Box::new(self.cond(d, locals)),
                boxed(self, d),
                boxed(self, d),
            ),
        }
    }

    fn cond(&mut self, depth: usize, locals: bool) -> Cond {
        match self.rng.below(if depth > 0 { 3 } else { 2 }) {
            0 => Cond::InBounds(self.any_index(), self.rng.range(0, 6)),
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
                Cond::Cmp(
                    op,
                    Box::new(self.expr(depth, locals)),
                    Box::new(self.expr(depth, locals)),
                )
            }
            _ => Cond::And(
                Box::new(self.cond(depth - 1, locals)),
                Box::new(self.cond(depth - 1, locals)),
            ),
        }
    }

    /// `row·ROW + i` with `i` affine in the inner variables and within `0 .. ROW`.
    fn row_index(&mut self) -> Index {
        let inner = self.fitting_terms(1, ROW);
        let mut index = inner;
        index.terms.push((ROW_VAR, ROW as i64));
        index
    }

    /// Affine in every variable in scope, within `0 .. len` over all their values.
    fn fitting_index(&mut self, len: usize) -> Index {
        self.fitting_terms(0, len)
    }

    /// Random terms over `scope[first..]`, dropped until their range fits in `len`, plus an
    /// offset placing that range at a random place inside `0 .. len`.
    fn fitting_terms(&mut self, first: usize, len: usize) -> Index {
        let mut terms = self.random_terms(first);
        loop {
            let (lo, hi) = self.range_of(&terms);
            if hi - lo < len as i64 {
                let offset = self.rng.range(-lo, len as i64 - 1 - hi);
                return Index { terms, offset };
            }
            terms.pop();
        }
    }

    /// Random terms over every variable in scope and an offset that may leave `0 .. len`.
    fn any_index(&mut self) -> Index {
        let terms = self.random_terms(0);
        Index {
            terms,
            offset: self.rng.range(-4, 4),
        }
    }

    fn random_terms(&mut self, first: usize) -> Vec<(Var, i64)> {
        let mut terms = Vec::new();
        for i in first..self.scope.len() {
            if self.rng.chance(60) {
                terms.push((self.scope[i].0, [-2, -1, 1, 1, 2, 3][self.rng.below(6)]));
            }
        }
        terms
    }

    fn range_of(&self, terms: &[(Var, i64)]) -> (i64, i64) {
        terms.iter().fold((0, 0), |(lo, hi), &(var, coeff)| {
            let extent = self
                .scope
                .iter()
                .find(|&&(v, _)| v == var)
                .map_or(0, |&(_, e)| e as i64);
            let last = coeff * (extent - 1).max(0);
            (lo + last.min(0), hi + last.max(0))
        })
    }
}

pub(super) fn same(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x == y || (x.is_nan() && y.is_nan()))
}

#[test]
fn random_kernels_agree_with_the_interpreter_on_every_thread_count() {
    let mut split_kernels = 0;
    for seed in 0..300 {
        let mut rng = Rng(seed);
        let rows = 1 + rng.below(5);
        let locals = rng.below(3) as u32;
        let mut generator = Generator {
            rng,
            rows,
            scope: Vec::new(),
            next_var: 2,
            locals,
        };
        let kernel = generator.kernel(seed);
        let lens = [INPUT_LEN, INPUT_LEN, rows * ROW, rows * ROW, 1];
        let mut inputs = Buffers::new(&lens);
        for input in INPUTS {
            for x in inputs.get_mut(input) {
                *x = generator.rng.value();
            }
        }

        let mut expected: Vec<Vec<f32>> = (0..lens.len())
            .map(|b| inputs.get(BufId(b as u32)).to_vec())
            .collect();
        interp::run(&kernel, &mut expected)
            .unwrap_or_else(|e| panic!("seed {seed}: interpreter: {e}"));
        let options = CompileOptions::always_split();
        let compiled = Compiled::with_options(std::slice::from_ref(&kernel), &lens, options)
            .unwrap_or_else(|e| panic!("seed {seed}: {e}\n{kernel:#?}"));
        let splits = compiled.kernels[0]
            .iter()
            .any(|piece| piece.parallel_extent.is_some_and(|e| e > 1));
        split_kernels += usize::from(splits);
        for threads in [1, 2, 3] {
            let mut bufs = inputs.clone();
            compiled.run(0, &mut bufs, threads).expect("kernel runs");
            for (b, want) in expected.iter().enumerate() {
                let got = bufs.get(BufId(b as u32));
                assert!(
                    same(got, want),
                    "seed {seed}, {threads} threads, buffer {b}: {got:?} != {want:?}\n{kernel:#?}"
                );
            }
        }
    }
    // Each row loop is proven disjoint, so about 70% (parallel) × 80% (more than one row) split.
    assert!(
        split_kernels > 120,
        "only {split_kernels} of 300 kernels ran on several threads"
    );
}
