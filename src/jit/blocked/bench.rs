//! Micro-benchmarks of blocked contraction nests, run by hand on one thread:
//! `cargo test --release --lib jit::blocked::bench -- --ignored --nocapture`.
//! Each prints GFLOP/s blocked (`vectorize: true`) and plain (`false`), best of 10 runs.

use std::time::Instant;

use crate::jit::random_kernels::Rng;
use crate::jit::test_kernels::{index, kernel, load, lp};
use crate::jit::{Buffers, CompileOptions, Compiled};
use crate::lower::loops::{BufId, Expr, Index, Kernel, Local, Stmt};

const ACC: Local = Local(0);

/// `Let(acc, 0)`, the reductions `(var, extent)` around `acc = fma(a, b, acc)`, the store.
fn nest_body(reductions: &[(u32, usize)], a: Expr, b: Expr, o: Index) -> Vec<Stmt> {
    let acc = || Box::new(Expr::Local(ACC));
    let mut body = vec![Stmt::Let(ACC, Expr::Fma(Box::new(a), Box::new(b), acc()))];
    for &(var, extent) in reductions.iter().rev() {
        body = vec![lp(var, extent, false, body)];
    }
    let mut lane_body = vec![Stmt::Let(ACC, Expr::Const(0.0))];
    lane_body.extend(body);
    lane_body.push(Stmt::Store(BufId(2), o, *acc()));
    lane_body
}

/// LeNet conv2's input `x[n, ci, oh + kh, ow + kw]` (`[N, 6, 14, 14]`), buffer 0, for the
/// variables `[n, ci, oh, kh, ow, kw]`.
fn lenet_conv2_input(vars: [u32; 6]) -> Expr {
    let [n, ci, oh, kh, ow, kw] = vars;
    let hw = 14;
    let terms = [
        (n, 6 * hw * hw),
        (ci, hw * hw),
        (oh, hw),
        (kh, hw),
        (ow, 1),
        (kw, 1),
    ];
    *load(0, &terms, 0)
}

/// Runs `kernel` on one thread, blocked and plain, and prints GFLOP/s for `flops` per run.
fn measure(name: &str, kernel: Kernel, lens: &[usize], flops: f64) {
    let mut rng = Rng(5);
    let mut bufs = Buffers::new(lens);
    for b in 0..2 {
        for v in bufs.get_mut(BufId(b)) {
            *v = rng.value();
        }
    }
    let mut results = vec![];
    for vectorize in [true, false] {
        let options = CompileOptions {
            vectorize,
            ..CompileOptions::default()
        };
        let compiled = Compiled::with_options(std::slice::from_ref(&kernel), lens, options)
            .expect("kernel compiles");
        let mut out = bufs.clone();
        let mut best = f64::INFINITY;
        for _ in 0..10 {
            let start = Instant::now();
            compiled.run(0, &mut out, 1).expect("kernel runs");
            best = best.min(start.elapsed().as_secs_f64());
        }
        println!(
            "{name}: {} {:.1} GFLOP/s ({:.2} ms)",
            if vectorize { "blocked" } else { "plain  " },
            flops / best / 1e9,
            best * 1e3
        );
        results.push(out);
    }
    assert_eq!(results[0], results[1], "{name}: blocked and plain differ");
}

#[test]
#[ignore = "a benchmark, run by hand"]
fn conv_forward_lenet_conv2_batch_256() {
    // out[n, co, oh, ow] = Σ_{ci, kh, kw} x[n, ci, oh + kh, ow + kw]·w[ci, kh, kw, co]:
    // rows = ow (10), lanes = co (16), reductions ci (6), kh (5), kw (5).
    let (n, ci, co, k, o) = (256usize, 6usize, 16usize, 5usize, 10usize);
    let (n_, ow, co_, ci_, kh, kw, oh) = (0, 1, 2, 3, 4, 5, 6);
    let x = lenet_conv2_input([n_, ci_, oh, kh, ow, kw]);
    let w = *load(
        1,
        &[
            (ci_, (k * k * co) as i64),
            (kh, (k * co) as i64),
            (kw, co as i64),
            (co_, 1),
        ],
        0,
    );
    let out = index(
        &[
            (n_, (co * o * o) as i64),
            (co_, (o * o) as i64),
            (oh, o as i64),
            (ow, 1),
        ],
        0,
    );
    let nest = nest_body(&[(ci_, ci), (kh, k), (kw, k)], x, w, out);
    let body = vec![lp(
        n_,
        n,
        true,
        vec![lp(
            oh,
            o,
            false,
            vec![lp(ow, o, false, vec![lp(co_, co, false, nest)])],
        )],
    )];
    let lens = [n * ci * 196, ci * k * k * co, n * co * o * o];
    let flops = 2.0 * (n * co * o * o * ci * k * k) as f64;
    measure("conv2 forward", kernel(7, 1, body), &lens, flops);
}

#[test]
#[ignore = "a benchmark, run by hand"]
fn dense_256x400_times_400x120() {
    // y[n, j] = Σ_k x[n, k]·w[k, j]: rows n (256), lanes j (120), reduction k (400).
    let (n, k, m) = (256usize, 400usize, 120usize);
    let x = *load(0, &[(0, k as i64), (2, 1)], 0);
    let w = *load(1, &[(2, m as i64), (1, 1)], 0);
    let nest = nest_body(&[(2, k)], x, w, index(&[(0, m as i64), (1, 1)], 0));
    let body = vec![lp(0, n, true, vec![lp(1, m, false, nest)])];
    let flops = 2.0 * (n * k * m) as f64;
    measure("dense", kernel(3, 1, body), &[n * k, k * m, n * m], flops);
}

#[test]
#[ignore = "a benchmark, run by hand"]
fn weight_gradient_lenet_conv2_batch_256() {
    // dw[ci, kh, kw, co] = Σ_{n, oh, ow} x[n, ci, oh + kh, ow + kw]·dy[n, oh, ow, co]:
    // rows kw (5), lanes co (16), reductions n (256), oh (10), ow (10): 25,600 terms each.
    let (n, ci, co, k, o) = (256usize, 6usize, 16usize, 5usize, 10usize);
    let (ci_, kh, kw, co_, n_, oh, ow) = (0, 1, 2, 3, 4, 5, 6);
    let x = lenet_conv2_input([n_, ci_, oh, kh, ow, kw]);
    let dy = *load(
        1,
        &[
            (n_, (o * o * co) as i64),
            (oh, (o * co) as i64),
            (ow, co as i64),
            (co_, 1),
        ],
        0,
    );
    let dw = index(
        &[
            (ci_, (k * k * co) as i64),
            (kh, (k * co) as i64),
            (kw, co as i64),
            (co_, 1),
        ],
        0,
    );
    let nest = nest_body(&[(n_, n), (oh, o), (ow, o)], x, dy, dw);
    let body = vec![lp(
        ci_,
        ci,
        true,
        vec![lp(
            kh,
            k,
            false,
            vec![lp(kw, k, false, vec![lp(co_, co, false, nest)])],
        )],
    )];
    let lens = [n * ci * 196, n * o * o * co, ci * k * k * co];
    let flops = 2.0 * (ci * k * k * co * n * o * o) as f64;
    measure("conv2 weight gradient", kernel(7, 1, body), &lens, flops);
}
