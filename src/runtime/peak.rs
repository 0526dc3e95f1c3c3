//! The machine's fp32 peak, measured: `cnnc bench` reports its figures as a fraction of it.
//!
//! Every thread of rayon's pool runs chains of fused multiply-adds at once (12 independent
//! chains, enough to cover the FMA latency on both FMA ports), with the widest vectors the CPU
//! has, and with the 4-lane vectors cnnc's generated code uses (Cranelift 0.135 emits no
//! wider ones); the best of a few short runs per thread counts, and the rates of at most one
//! thread per core add up.
//! Measured rather than computed from a clock and a core count, because those are what a
//! virtual machine reports least reliably (this project's development host said 2.6 GHz and
//! 2 cores in `/proc/cpuinfo`; its turbo and its FMA ports are nowhere to read).

use std::time::Instant;

/// Independent accumulation chains per run: 2 ports × a 4–6 cycle latency, with room to spare.
const CHAINS: usize = 12;
/// Iterations of a run (each does `CHAINS` multiply-adds): a few milliseconds.
const ITERATIONS: u64 = 1 << 17;
/// Runs per thread and width; the fastest counts (the host is shared).
const RUNS: usize = 5;

/// The measured peak of the pool's threads together (at most one per core).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Peak {
    /// GFLOP/s with the widest vectors (2 flops per lane of a multiply-add).
    pub gflops: f64,
    /// Lanes of those vectors (`f32`s): 16 with AVX-512, 8 with AVX2, 4 otherwise.
    pub lanes: usize,
    /// GFLOP/s with 4-lane vectors: the ceiling of cnnc's generated code.
    pub f32x4_gflops: f64,
    /// Threads whose rates were added: the pool's, at most one per core.
    pub threads: usize,
}

/// Measures the peak on every thread of rayon's global pool, or `None` where there is no
/// measuring kernel for this CPU (cnnc has them for x86-64 with FMA). With more threads than
/// cores only the fastest core-count of them count: a thread's best short run may have had a
/// core to itself, so the sum of all of them would count a core several times (1000 threads on
/// 2 cores "measured" 249,000 GFLOP/s).
pub fn measure() -> Option<Peak> {
    let widest = kernels::widest()?;
    let narrow = kernels::f32x4()?;
    let cores = std::thread::available_parallelism().map_or(usize::MAX, |n| n.get());
    let threads = rayon::current_num_threads().min(cores);
    let rate = |kernel: Kernel| -> f64 {
        let mut rates = rayon::broadcast(|_| best_rate(kernel));
        rates.sort_by(|a, b| b.total_cmp(a));
        rates.iter().take(threads).sum::<f64>() / 1e9
    };
    Some(Peak {
        gflops: rate(widest),
        lanes: widest.lanes,
        f32x4_gflops: rate(narrow),
        threads,
    })
}

/// A measuring loop: `run(n)` does `n · CHAINS` multiply-adds of `lanes` lanes.
#[derive(Clone, Copy)]
struct Kernel {
    lanes: usize,
    run: fn(u64) -> f32,
}

/// The fastest of [`RUNS`] runs of `kernel` on this thread, in flop/s.
fn best_rate(kernel: Kernel) -> f64 {
    let flops = (ITERATIONS * CHAINS as u64 * kernel.lanes as u64 * 2) as f64;
    let mut best = 0.0f64;
    for _ in 0..RUNS {
        let start = Instant::now();
        let sum = (kernel.run)(std::hint::black_box(ITERATIONS));
        let seconds = start.elapsed().as_secs_f64();
        std::hint::black_box(sum);
        if seconds > 0.0 {
            best = best.max(flops / seconds);
        }
    }
    best
}

#[cfg(target_arch = "x86_64")]
mod kernels {
    use std::arch::x86_64::*;
    use std::hint::black_box;

    use super::{Kernel, CHAINS};

    /// The widest vectors this CPU multiply-adds in.
    pub(super) fn widest() -> Option<Kernel> {
        if is_x86_feature_detected!("avx512f") {
            return Some(Kernel {
                lanes: 16,
                // SAFETY: the CPU has AVX-512F (checked above).
                run: |n| unsafe { fma_512(n) },
            });
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return Some(Kernel {
                lanes: 8,
                // SAFETY: the CPU has AVX2 and FMA (checked above).
                run: |n| unsafe { fma_256(n) },
            });
        }
        f32x4()
    }

    /// 4-lane vectors, as cnnc's generated code uses.
    pub(super) fn f32x4() -> Option<Kernel> {
        is_x86_feature_detected!("fma").then_some(Kernel {
            lanes: 4,
            // SAFETY: the CPU has FMA (checked above).
            run: |n| unsafe { fma_128(n) },
        })
    }

    /// `unsafe fn $name(n: u64) -> f32` for the CPU feature `$feature`: `CHAINS` accumulators,
    /// each `acc = acc·m + c` per iteration (m ≈ 1, so nothing overflows or goes subnormal),
    /// summed at the end so that none is optimised away.
    macro_rules! fma_chains {
        ($name:ident, $feature:literal, $lanes:literal, $set1:ident, $fmadd:ident, $add:ident, $store:ident) => {
            #[target_feature(enable = $feature)]
            unsafe fn $name(n: u64) -> f32 {
                let (m, c) = ($set1(black_box(0.999_999)), $set1(black_box(1e-6)));
                let mut acc = [$set1(1.0); CHAINS];
                for _ in 0..n {
                    for a in &mut acc {
                        *a = $fmadd(*a, m, c);
                    }
                }
                let mut sum = $set1(0.0);
                for a in acc {
                    sum = $add(sum, a);
                }
                let mut lanes = [0.0f32; $lanes];
                $store(lanes.as_mut_ptr(), sum);
                lanes.iter().sum()
            }
        };
    }

    fma_chains!(
        fma_512,
        "avx512f",
        16,
        _mm512_set1_ps,
        _mm512_fmadd_ps,
        _mm512_add_ps,
        _mm512_storeu_ps
    );
    fma_chains!(
        fma_256,
        "avx2,fma",
        8,
        _mm256_set1_ps,
        _mm256_fmadd_ps,
        _mm256_add_ps,
        _mm256_storeu_ps
    );
    fma_chains!(
        fma_128,
        "fma",
        4,
        _mm_set1_ps,
        _mm_fmadd_ps,
        _mm_add_ps,
        _mm_storeu_ps
    );
}

#[cfg(not(target_arch = "x86_64"))]
mod kernels {
    use super::Kernel;

    pub(super) fn widest() -> Option<Kernel> {
        None
    }

    pub(super) fn f32x4() -> Option<Kernel> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peak_is_measured_on_x86_64_with_fma() {
        let has_fma = cfg!(target_arch = "x86_64") && {
            #[cfg(target_arch = "x86_64")]
            let fma = is_x86_feature_detected!("fma");
            #[cfg(not(target_arch = "x86_64"))]
            let fma = false;
            fma
        };
        let peak = measure();
        assert_eq!(peak.is_some(), has_fma, "{peak:?}");
        if let Some(peak) = peak {
            assert!(peak.gflops > 0.0 && peak.f32x4_gflops > 0.0, "{peak:?}");
            assert!([4, 8, 16].contains(&peak.lanes), "{peak:?}");
        }
    }

    /// A pool of three times as many threads as cores counts one thread per core.
    #[test]
    fn more_threads_than_cores_count_once_per_core() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3 * cores)
            .build()
            .expect("a pool");
        if let Some(peak) = pool.install(measure) {
            assert_eq!(peak.threads, cores, "{peak:?}");
        }
    }
}
