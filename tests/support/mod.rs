//! Shared by the test crates: seeded random tensors, the tolerance check, [`Twin`], a buffer
//! table that runs kernels both through the checking interpreter (every access in bounds,
//! parallel iterations on disjoint elements) and through the JIT, and [`cnnc`], the binary run
//! from the repository's root.
//!
//! Each test crate compiles its own copy and uses part of it, hence the `allow`.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

use cnnc::jit::{Buffers, CompileOptions, Compiled};
use cnnc::lower::interp;
use cnnc::lower::loops::{BufId, Kernel};
use ndarray::{ArrayD, IxDyn};

/// Absolute part of every tolerance.
pub const ATOL: f32 = 1e-4;
/// Relative part for whole graphs and batchnorm, which divides rounding errors by small
/// standard deviations.
pub const GRAPH_RTOL: f32 = 1e-3;

/// splitmix64: random tensors from one proptest-drawn seed, so failures shrink to a seed.
pub struct Rng(pub u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.next() >> 40) as f32 / (1u64 << 24) as f32)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub fn tensor(&mut self, shape: &[usize], lo: f32, hi: f32) -> ArrayD<f32> {
        ArrayD::from_shape_fn(IxDyn(shape), |_| self.uniform(lo, hi))
    }

    /// Values at least 0.01 apart (a shuffled ramp), so max pooling has no ties.
    pub fn distinct(&mut self, shape: &[usize]) -> ArrayD<f32> {
        let len: usize = shape.iter().product();
        let mut ramp: Vec<f32> = (0..len)
            .map(|i| i as f32 * 0.01 - len as f32 * 0.005)
            .collect();
        for i in (1..len).rev() {
            ramp.swap(i, self.below(i + 1));
        }
        ArrayD::from_shape_vec(IxDyn(shape), ramp).expect("shape matches length")
    }
}

/// `|a − b| ≤ ATOL + rtol·|b|` for every element.
pub fn assert_close(actual: &ArrayD<f32>, expected: &ArrayD<f32>, rtol: f32, what: &str) {
    assert_eq!(actual.shape(), expected.shape(), "{what}: shape");
    for ((index, a), e) in actual.indexed_iter().zip(expected.iter()) {
        assert!(
            (a - e).abs() <= ATOL + rtol * e.abs(),
            "{what} at {index:?}: lowered {a}, reference {e}"
        );
    }
}

/// Two copies of a buffer table: one run by `interp::run_checking_parallel`, one by the JIT
/// with `threads` threads.
pub struct Twin {
    pub interp: Vec<Vec<f32>>,
    pub jit: Vec<Vec<f32>>,
    pub threads: usize,
}

impl Twin {
    pub fn new(lens: &[usize], threads: usize) -> Twin {
        let table: Vec<Vec<f32>> = lens.iter().map(|&len| vec![0.0; len]).collect();
        Twin {
            interp: table.clone(),
            jit: table,
            threads,
        }
    }

    /// A new buffer holding `data`, in both tables.
    pub fn push(&mut self, data: Vec<f32>) -> BufId {
        self.interp.push(data.clone());
        self.jit.push(data);
        BufId(self.jit.len() as u32 - 1)
    }

    pub fn set(&mut self, buf: BufId, data: &[f32]) {
        for table in [&mut self.interp, &mut self.jit] {
            let target = &mut table[buf.0 as usize];
            assert_eq!(target.len(), data.len(), "buffer {}: length", buf.0);
            target.copy_from_slice(data);
        }
    }

    /// Runs `kernels` in order on both tables (compiled together for the JIT).
    pub fn run(&mut self, kernels: &[&Kernel]) {
        for kernel in kernels {
            interp::run_checking_parallel(kernel, &mut self.interp)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let lens: Vec<usize> = self.jit.iter().map(Vec::len).collect();
        let owned: Vec<Kernel> = kernels.iter().map(|&k| k.clone()).collect();
        // Every parallel piece split, however small, so that the tests exercise splitting.
        let compiled = Compiled::with_options(&owned, &lens, CompileOptions::always_split())
            .unwrap_or_else(|e| panic!("{e}"));
        let mut buffers = Buffers::new(&lens);
        for (i, data) in self.jit.iter().enumerate() {
            buffers.get_mut(BufId(i as u32)).copy_from_slice(data);
        }
        for k in 0..owned.len() {
            compiled
                .run(k, &mut buffers, self.threads)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        for (i, data) in self.jit.iter_mut().enumerate() {
            data.copy_from_slice(buffers.get(BufId(i as u32)));
        }
    }

    /// Buffer `buf` as a tensor of `shape`, from the interpreter's table and the JIT's.
    pub fn get(&self, buf: BufId, shape: &[usize]) -> [ArrayD<f32>; 2] {
        [&self.interp, &self.jit].map(|table| {
            ArrayD::from_shape_vec(IxDyn(shape), table[buf.0 as usize].clone())
                .expect("buffer length matches its shape")
        })
    }

    /// Both runs of buffer `buf` against `expected`.
    pub fn check(&self, buf: BufId, expected: &ArrayD<f32>, rtol: f32, what: &str) {
        let [interpreted, jitted] = self.get(buf, expected.shape());
        assert_close(
            &interpreted,
            expected,
            rtol,
            &format!("{what} (interpreter)"),
        );
        assert_close(&jitted, expected, rtol, &format!("{what} (JIT)"));
    }
}

/// The repository's root.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `cnnc args…` run from the repository's root, without colour.
pub fn cnnc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cnnc"))
        .args(args)
        .current_dir(root())
        .env("NO_COLOR", "1")
        .output()
        .expect("the cnnc binary runs")
}
