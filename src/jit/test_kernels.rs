//! Small builders of loop IR kernels and a runner, shared by the JIT's unit tests.

use super::{Buffers, CompileOptions, Compiled};
pub(crate) use crate::lower::loops::test_builders::{index, lp};
use crate::lower::loops::{BufId, Expr, Kernel, Stmt};

pub(crate) fn load(buf: u32, terms: &[(u32, i64)], offset: i64) -> Box<Expr> {
    Box::new(Expr::Load(BufId(buf), index(terms, offset)))
}

pub(crate) fn kernel(vars: u32, locals: u32, body: Vec<Stmt>) -> Kernel {
    Kernel {
        name: "test.forward".to_string(),
        vars,
        locals,
        body,
    }
}

/// Compiles one kernel, fills buffers with `inputs` (by position) and runs it.
pub(crate) fn run_one(
    kernel: Kernel,
    lens: &[usize],
    inputs: &[&[f32]],
    threads: usize,
) -> Buffers {
    let compiled = Compiled::with_options(&[kernel], lens, CompileOptions::always_split())
        .expect("kernel compiles");
    let mut bufs = Buffers::new(lens);
    for (b, input) in inputs.iter().enumerate() {
        bufs.get_mut(BufId(b as u32)).copy_from_slice(input);
    }
    compiled.run(0, &mut bufs, threads).expect("kernel runs");
    bufs
}

pub(crate) fn ramp(len: usize, scale: f32, shift: f32) -> Vec<f32> {
    (0..len)
        .map(|i| (i as f32 * scale + shift).sin() * 3.0)
        .collect()
}

/// Runs `kernel` on copies of `bufs` compiled with blocking and vectorisation on, then off.
pub(crate) fn both_ways(kernel: &Kernel, bufs: &Buffers, threads: usize) -> (Buffers, Buffers) {
    let run = |vectorize| {
        let options = CompileOptions {
            vectorize,
            ..CompileOptions::always_split()
        };
        let compiled = Compiled::with_options(std::slice::from_ref(kernel), &bufs.lens(), options)
            .unwrap_or_else(|e| panic!("{e}\n{kernel:#?}"));
        let mut out = bufs.clone();
        compiled.run(0, &mut out, threads).expect("kernel runs");
        out
    };
    (run(true), run(false))
}

/// Every buffer's bits, to compare results exactly (NaN payloads and signed zeros included).
pub(crate) fn bits(bufs: &Buffers) -> Vec<Vec<u32>> {
    (0..bufs.lens().len())
        .map(|b| {
            bufs.get(BufId(b as u32))
                .iter()
                .map(|f| f.to_bits())
                .collect()
        })
        .collect()
}
