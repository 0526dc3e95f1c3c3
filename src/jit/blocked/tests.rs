//! Tests of the recogniser and of blocked code against the plain translation and `lower::interp`.

use super::contraction;
use crate::jit::random_kernels::{same, Rng};
use crate::jit::test_kernels::{bits, both_ways, index, kernel, load, lp};
use crate::jit::Buffers;
use crate::lower::interp;
use crate::lower::loops::{BinOp, BufId, CmpOp, Cond, Expr, Index, Local, Loop, Stmt, UnOp};

const ACC: Local = Local(0);
const ROW: u32 = 0;
const LANE: u32 = 1;
/// Reduction variables are 2, 3, 4; an outer loop around the nest is 5.
const OUTER: u32 = 5;
const OUT: BufId = BufId(2);

fn acc() -> Box<Expr> {
    Box::new(Expr::Local(ACC))
}

/// The lanes loop of a nest: `Let(acc, init)`, reductions, `Store(out, o, epilogue)`.
fn lanes_loop(
    lanes: usize,
    init: Expr,
    reductions: &[usize],
    a: Expr,
    b: Expr,
    o: Index,
    epilogue: Expr,
) -> Stmt {
    let mut body = vec![Stmt::Let(ACC, Expr::Fma(Box::new(a), Box::new(b), acc()))];
    for (k, &extent) in reductions.iter().enumerate().rev() {
        body = vec![lp(2 + k as u32, extent, false, body)];
    }
    let mut lane_body = vec![Stmt::Let(ACC, init)];
    lane_body.extend(body);
    lane_body.push(Stmt::Store(OUT, o, epilogue));
    lp(LANE, lanes, false, lane_body)
}

fn as_loop(stmt: &Stmt) -> &Loop {
    match stmt {
        Stmt::Loop(lp) => lp,
        other => panic!("not a loop: {other:?}"),
    }
}

/// `out[i, j] = Σ_k x[i, k]·w[k, j]` for i < 3, j < 8, k < 5, with `epilogue` and `init`.
fn matmul(init: Expr, epilogue: Expr, o: Index) -> Stmt {
    let a = *load(0, &[(ROW, 5), (2, 1)], 0);
    let b = *load(1, &[(2, 8), (LANE, 1)], 0);
    lp(
        ROW,
        3,
        false,
        vec![lanes_loop(8, init, &[5], a, b, o, epilogue)],
    )
}

fn o() -> Index {
    index(&[(ROW, 8), (LANE, 1)], 0)
}

#[test]
fn the_documented_form_is_recognised_with_and_without_rows() {
    let nest = matmul(Expr::Const(0.0), *acc(), o());
    let found = contraction(as_loop(&nest)).expect("recognised");
    assert_eq!(found.rows.map(|r| r.var.0), Some(ROW));
    assert_eq!(found.reductions.len(), 1);
    let lanes = &as_loop(&nest).body[0];
    let found = contraction(as_loop(lanes)).expect("recognised without rows");
    assert!(found.rows.is_none());
    // Accumulating into the output and a relu epilogue are part of the form.
    let relu = Expr::Binary(BinOp::Max, acc(), Box::new(Expr::Const(0.0)));
    let into_out = Expr::Load(OUT, o());
    assert!(contraction(as_loop(&matmul(into_out, relu, o()))).is_some());
}

#[test]
fn nests_that_blocking_would_change_are_refused() {
    let refused = |stmt: Stmt, why: &str| {
        assert!(contraction(as_loop(&stmt)).is_none(), "{why}: {stmt:#?}");
    };
    // init reads out elsewhere than o: another output's element, maybe already stored.
    refused(
        matmul(*load(2, &[(ROW, 8), (LANE, 1)], 1), *acc(), o()),
        "out read at o + 1",
    );
    // The epilogue reads out.
    let reads_out = Expr::Binary(BinOp::Add, acc(), load(2, &[(ROW, 8), (LANE, 1)], 0));
    refused(
        matmul(Expr::Const(0.0), reads_out, o()),
        "epilogue reads out",
    );
    // A reduction variable in the epilogue, in init, in o.
    let uses_k = Expr::Binary(
        BinOp::Add,
        acc(),
        Box::new(Expr::IndexValue(index(&[(2, 1)], 0))),
    );
    refused(
        matmul(Expr::Const(0.0), uses_k, o()),
        "reduction variable in the epilogue",
    );
    refused(
        matmul(Expr::IndexValue(index(&[(2, 1)], 0)), *acc(), o()),
        "reduction variable in init",
    );
    refused(
        matmul(
            Expr::Const(0.0),
            *acc(),
            index(&[(ROW, 8), (LANE, 1), (2, 1)], 0),
        ),
        "in o",
    );
    // Two (row, lane) pairs storing to one element.
    refused(
        matmul(Expr::Const(0.0), *acc(), index(&[(ROW, 4), (LANE, 1)], 0)),
        "overlapping rows",
    );
    refused(
        matmul(Expr::Const(0.0), *acc(), index(&[(ROW, 1)], 0)),
        "lanes share an element",
    );
    // Another local in init or the epilogue.
    refused(
        matmul(Expr::Local(Local(1)), *acc(), o()),
        "another local in init",
    );
    // An extra statement in the lanes loop, and in the rows loop.
    let Stmt::Loop(mut rows) = matmul(Expr::Const(0.0), *acc(), o()) else {
        unreachable!()
    };
    let Stmt::Loop(lanes) = &mut rows.body[0] else {
        unreachable!()
    };
    lanes.body.push(Stmt::Store(
        BufId(3),
        index(&[(LANE, 1)], 0),
        Expr::Const(1.0),
    ));
    assert!(contraction(&rows).is_none());
    let Stmt::Loop(mut rows) = matmul(Expr::Const(0.0), *acc(), o()) else {
        unreachable!()
    };
    rows.body.push(Stmt::Store(
        BufId(3),
        index(&[(ROW, 1)], 0),
        Expr::Const(1.0),
    ));
    assert!(contraction(&rows).is_none());
    // The reduction statement not in the form `acc = fma(a, b, acc)`.
    let Stmt::Loop(mut rows) = matmul(Expr::Const(0.0), *acc(), o()) else {
        unreachable!()
    };
    let Stmt::Loop(lanes) = &mut rows.body[0] else {
        unreachable!()
    };
    let Stmt::Loop(k) = &mut lanes.body[1] else {
        unreachable!()
    };
    k.body = vec![Stmt::Let(
        ACC,
        Expr::Binary(BinOp::Add, acc(), load(0, &[(2, 1)], 0)),
    )];
    assert!(contraction(&rows).is_none());
}

#[test]
fn a_sum_read_after_its_nest_is_left_to_the_plain_translation() {
    // out2[0] = acc after the nest: blocking would leave acc unset, so it must be refused;
    // the results then agree with the interpreter (acc is the last output's sum).
    let nest = matmul(Expr::Const(0.5), *acc(), o());
    let after = Stmt::Store(BufId(3), index(&[], 0), *acc());
    let kernel = kernel(3, 1, vec![nest, after]);
    let bufs = random_buffers(&mut Rng(1), &[15, 40, 24, 1]);
    let (blocked, plain) = both_ways(&kernel, &bufs, 1);
    assert_eq!(bits(&blocked), bits(&plain));
    assert_eq!(blocked.get(BufId(3))[0], blocked.get(OUT)[23]);
}

fn random_buffers(rng: &mut Rng, lens: &[usize]) -> Buffers {
    let mut bufs = Buffers::new(lens);
    for b in 0..lens.len() {
        for v in bufs.get_mut(BufId(b as u32)) {
            *v = rng.value();
        }
    }
    bufs
}

/// A random access `Σ coeff·var + offset` over `vars` (with extents) and the largest
/// index it reaches; the lanes coefficient is drawn from `lane_coeffs`.
fn access(rng: &mut Rng, vars: &[(u32, usize)], lane_coeffs: &[i64]) -> (Index, i64) {
    let offset = rng.range(0, 3);
    let mut terms = vec![];
    let mut max = offset;
    for &(var, extent) in vars {
        let coeff = if var == LANE {
            lane_coeffs[rng.below(lane_coeffs.len())]
        } else {
            [0, 1, 2, 5][rng.below(4)]
        };
        if coeff != 0 {
            terms.push((var, coeff));
            max += coeff * (extent as i64 - 1).max(0);
        }
    }
    (index(&terms, offset), max)
}

/// Random nests of the documented form and the parts the lowerings use (see the module doc
/// of `lower::loops`), with buffer lengths that keep every access in bounds.
struct Generator {
    rng: Rng,
    /// Variables in scope in the reductions, with extents.
    vars: Vec<(u32, usize)>,
    /// Variables in scope outside them (no reduction variable).
    outer_vars: Vec<(u32, usize)>,
    lens: [i64; 4],
}

impl Generator {
    fn load(&mut self, buf: u32, in_reduction: bool, lane_coeffs: &[i64]) -> Expr {
        let vars = if in_reduction {
            &self.vars
        } else {
            &self.outer_vars
        }
        .clone();
        let (index, max) = access(&mut self.rng, &vars, lane_coeffs);
        self.lens[buf as usize] = self.lens[buf as usize].max(max + 1);
        Expr::Load(BufId(buf), index)
    }

    /// A load, sometimes behind a zero-padding guard that varies with some variable.
    fn operand(&mut self, buf: u32) -> Expr {
        let value = self.load(buf, true, &[0, 1, 1, 2, 3]);
        if !self.rng.chance(25) {
            return value;
        }
        let vars = self.vars.clone();
        let (mut guard, _) = access(&mut self.rng, &vars, &[0, 1]);
        guard.offset -= 1;
        Expr::Select(
            Box::new(Cond::InBounds(guard, 3)),
            Box::new(value),
            Box::new(Expr::Const(0.0)),
        )
    }

    fn init(&mut self, o: &Index) -> Expr {
        match self.rng.below(3) {
            0 => Expr::Const(self.rng.value()),
            1 => self.load(3, false, &[0, 1, 2]),
            _ => Expr::Load(OUT, o.clone()),
        }
    }

    fn epilogue(&mut self) -> Expr {
        let other = Box::new(self.load(3, false, &[0, 1, 2]));
        match self.rng.below(6) {
            0 => *acc(),
            1 => Expr::Binary(BinOp::Max, acc(), Box::new(Expr::Const(0.0))),
            2 => Expr::Fma(acc(), other, Box::new(Expr::Const(0.25))),
            3 => {
                let vars = self.outer_vars.clone();
                let (mut position, _) = access(&mut self.rng, &vars, &[1, 2]);
                position.offset -= 2;
                Expr::Binary(BinOp::Add, acc(), Box::new(Expr::IndexValue(position)))
            }
            4 => Expr::Select(
                Box::new(Cond::Cmp(CmpOp::Gt, acc(), other)),
                acc(),
                Box::new(Expr::Unary(UnOp::Neg, acc())),
            ),
            _ => Expr::Unary(UnOp::Sqrt, Box::new(Expr::Unary(UnOp::Abs, acc()))),
        }
    }
}

#[test]
fn random_nests_are_bitwise_the_plain_translation_and_the_interpreter() {
    for seed in 0..160 {
        let mut rng = Rng(seed);
        // 0: lanes loop only; 1: rows loop; 2: parallel rows loop; 3: an outer loop around.
        let layout = rng.below(4);
        let rows = if layout == 0 { 1 } else { 1 + rng.below(9) };
        let lanes = 1 + rng.below(13);
        let reductions: Vec<usize> = (0..1 + rng.below(3))
            .map(|_| if rng.chance(5) { 0 } else { 1 + rng.below(5) })
            .collect();
        let mut outer_vars = vec![(LANE, lanes)];
        if layout != 0 {
            outer_vars.push((ROW, rows));
        }
        if layout == 3 {
            outer_vars.push((OUTER, 2));
        }
        let mut vars = outer_vars.clone();
        vars.extend((0..reductions.len()).map(|k| (2 + k as u32, reductions[k])));
        // Row-major with a lane stride of 1 or 2 and padded rows, or lanes across rows.
        let lane_stride = 1 + rng.below(2) as i64;
        let (lane_coeff, row_coeff) = if layout != 0 && rng.chance(25) {
            (rows as i64, 1)
        } else {
            (lane_stride, lanes as i64 * lane_stride + rng.range(0, 2))
        };
        let per_outer = row_coeff.max(lane_coeff) * (rows.max(lanes) as i64 + 1);
        let terms: Vec<(u32, i64)> = [(LANE, lane_coeff), (ROW, row_coeff), (OUTER, per_outer)]
            .into_iter()
            .filter(|(v, _)| outer_vars.iter().any(|(w, _)| w == v))
            .collect();
        let o = index(&terms, rng.range(0, 2));
        let out_len = o.offset + 2 * per_outer;
        let mut generator = Generator {
            rng,
            vars,
            outer_vars,
            lens: [1, 1, out_len, 1],
        };
        let init = generator.init(&o);
        let a = generator.operand(0);
        let b = generator.operand(1);
        let epilogue = generator.epilogue();
        let nest = lanes_loop(lanes, init, &reductions, a, b, o, epilogue);
        let top = match layout {
            0 => nest,
            1 | 2 => lp(ROW, rows, layout == 2, vec![nest]),
            _ => lp(OUTER, 2, false, vec![lp(ROW, rows, false, vec![nest])]),
        };
        let recognised = match (&top, layout) {
            (Stmt::Loop(outer), 3) => contraction(as_loop(&outer.body[0])).is_some(),
            (Stmt::Loop(lp), _) => contraction(lp).is_some(),
            _ => false,
        };
        assert!(recognised, "seed {seed}: not recognised\n{top:#?}");

        let kernel = kernel(6, 1, vec![top]);
        let lens: Vec<usize> = generator.lens.iter().map(|&l| l as usize).collect();
        let bufs = random_buffers(&mut generator.rng, &lens);
        let threads = 1 + generator.rng.below(3);
        let (blocked, plain) = both_ways(&kernel, &bufs, threads);
        assert_eq!(
            bits(&blocked),
            bits(&plain),
            "seed {seed}\n{}",
            crate::lower::print::kernel_text(&kernel, &|b| format!("b{}", b.0))
        );
        let mut expected: Vec<Vec<f32>> = (0..4).map(|b| bufs.get(BufId(b)).to_vec()).collect();
        interp::run(&kernel, &mut expected).expect("interpreter runs");
        let got = blocked.get(OUT);
        assert!(
            same(got, &expected[2]),
            "seed {seed}: {got:?} != {:?}",
            expected[2]
        );
    }
}

#[test]
fn exp_and_ln_in_the_epilogue_are_bitwise_the_plain_translation() {
    // sigmoid(acc) and ln(|acc| + 1): computed on f32x4 lanes (math.rs emits the same
    // instructions for f32 and f32x4), so each lane must equal the scalar code bit for bit.
    let one = || Box::new(Expr::Const(1.0));
    let sigmoid = Expr::Binary(
        BinOp::Div,
        one(),
        Box::new(Expr::Binary(
            BinOp::Add,
            one(),
            Box::new(Expr::Unary(
                UnOp::Exp,
                Box::new(Expr::Unary(UnOp::Neg, acc())),
            )),
        )),
    );
    let log = Expr::Unary(
        UnOp::Ln,
        Box::new(Expr::Binary(
            BinOp::Add,
            Box::new(Expr::Unary(UnOp::Abs, acc())),
            one(),
        )),
    );
    for epilogue in [sigmoid, log] {
        let kernel = kernel(3, 1, vec![matmul(Expr::Const(0.5), epilogue, o())]);
        let bufs = random_buffers(&mut Rng(7), &[15, 40, 24, 1]);
        let (blocked, plain) = both_ways(&kernel, &bufs, 1);
        assert_eq!(bits(&blocked), bits(&plain));
    }
}
