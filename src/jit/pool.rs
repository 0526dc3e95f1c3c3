//! The threads that run the parts of a split parallel piece: workers that spin between jobs.
//!
//! A training step runs a split kernel every few hundred microseconds with single-threaded
//! ones between. rayon's workers go to sleep a few microseconds after running out of work, and
//! waking one (a futex, on a virtual machine an inter-processor interrupt) took tens of
//! microseconds per split kernel here. These workers spin, watching for the next job, for
//! [`SPIN`] after each one (as OpenMP's do, for 200 ms by default), and only then park.
//!
//! One job at a time: [`fork_join`] hands parts `1..parts` to the workers and runs part 0 on
//! the calling thread, then waits for all of them. The pool has one worker fewer than rayon's
//! global pool has threads (`--threads`), none when that is more than the cores. A caller that
//! finds the pool busy (another thread's job) or too small runs its parts on rayon instead;
//! either way every part runs once, so results do not depend on which.
//!
//! Measured (2026-12-02, Intel host, 2 cores, `cnnc bench models/lenet.cnn --threads 2
//! --format json`, 3 alternating runs against rayon's workers): training at batch 256
//! 23,500–23,800 → 26,700–27,000 images/s, at 64 21,900 → 27,500–27,700, at 8 14,100–14,400 →
//! 22,200–22,500; inference at 64 56,800–58,900 → 68,700–70,700.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a worker watches for the next job before it parks.
const SPIN: Duration = Duration::from_millis(2);
/// How long of that it only spins; after it, it yields the core between looks.
const SPIN_HARD: Duration = Duration::from_micros(100);

/// A task of `fork_join`, its lifetime erased: valid while the job that holds it runs.
type Task = *const (dyn Fn(usize) + Sync);

#[derive(Clone, Copy)]
struct Job {
    task: Task,
    parts: usize,
}

struct Shared {
    /// Bumped by each job; a worker runs a job when it sees a generation it has not seen.
    generation: AtomicU64,
    /// Written only by the caller holding `busy`, and only while no worker reads it (between
    /// `remaining` reaching 0 and the next `generation`).
    job: UnsafeCell<Job>,
    /// Workers that have not finished the current job.
    remaining: AtomicUsize,
    /// Workers parked, or about to park, on `wake`.
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
    /// Held by the caller whose job the workers run.
    busy: AtomicBool,
    /// A worker's part of the current job panicked (the caller panics in turn).
    panicked: AtomicBool,
    workers: usize,
}

// SAFETY: `job` is written only under the protocol described on it (the caller holding `busy`
// while `remaining` is 0, before publishing with `generation`), and read by workers only after
// they see that generation and before they decrement `remaining`. The task it points to is
// `Sync`.
unsafe impl Sync for Shared {}
// SAFETY: as above; the raw task pointer is only dereferenced under that protocol.
unsafe impl Send for Shared {}

fn pool() -> &'static Shared {
    static POOL: OnceLock<&'static Shared> = OnceLock::new();
    POOL.get_or_init(|| {
        // Spinning threads beyond the cores would take turns on them: with more threads asked
        // for than there are cores, the pool has none and rayon runs every part.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = rayon::current_num_threads();
        let workers = if threads > cores { 0 } else { threads - 1 };
        let shared: &'static Shared = Box::leak(Box::new(Shared {
            generation: AtomicU64::new(0),
            job: UnsafeCell::new(Job {
                task: &idle as &(dyn Fn(usize) + Sync),
                parts: 0,
            }),
            remaining: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            busy: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
            workers,
        }));
        for index in 1..=workers {
            let spawned = std::thread::Builder::new()
                .name(format!("cnnc-worker-{index}"))
                .spawn(move || work(shared, index));
            if spawned.is_err() {
                // A worker that could not start: `busy` stays set, so no job ever waits for
                // it and every caller uses rayon.
                shared.busy.store(true, Ordering::SeqCst);
                break;
            }
        }
        shared
    })
}

/// The task of no job (workers only read a job after its generation is published).
fn idle(_: usize) {}

/// A worker's loop: wait for a job, run its part if it has one, report, repeat.
fn work(shared: &'static Shared, index: usize) {
    let mut seen = 0u64;
    loop {
        let start = Instant::now();
        let mut spins = 0u32;
        let generation = loop {
            let generation = shared.generation.load(Ordering::Acquire);
            if generation != seen {
                break generation;
            }
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(64) {
                std::hint::spin_loop();
                continue;
            }
            let waited = start.elapsed();
            if waited < SPIN {
                // After the first stretch, leave the core to anything else runnable (more
                // threads than cores, say) while still watching.
                if waited > SPIN_HARD {
                    std::thread::yield_now();
                }
                continue;
            }
            let mut guard = shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            shared.sleepers.fetch_add(1, Ordering::SeqCst);
            while shared.generation.load(Ordering::SeqCst) == seen {
                guard = shared.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
            }
            shared.sleepers.fetch_sub(1, Ordering::SeqCst);
        };
        seen = generation;
        // SAFETY: the job was written before `generation` was published (release/acquire) and
        // is not written again until this worker decrements `remaining`.
        let job = unsafe { *shared.job.get() };
        if index < job.parts {
            // SAFETY: the caller waits for `remaining` to reach 0 before its task goes away.
            let run = || unsafe { (*job.task)(index) };
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).is_err() {
                shared.panicked.store(true, Ordering::Relaxed);
            }
        }
        shared.remaining.fetch_sub(1, Ordering::Release);
    }
}

/// Runs `task(part)` for every part in `0..parts`, concurrently, and returns when all are done:
/// part 0 on the calling thread, the others on the pool's workers, or on rayon's when the pool
/// is busy with another caller's job or has too few workers. A part that panics makes this
/// panic, once every part has ended.
pub fn fork_join(parts: usize, task: &(dyn Fn(usize) + Sync)) {
    if parts <= 1 {
        if parts == 1 {
            task(0);
        }
        return;
    }
    let shared = pool();
    let free = || {
        shared
            .busy
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    };
    if parts - 1 > shared.workers || !free() {
        rayon::scope(|scope| {
            for part in 1..parts {
                scope.spawn(move |_| task(part));
            }
            task(0);
        });
        return;
    }
    // SAFETY: this caller holds `busy` and the previous job's `remaining` reached 0, so no
    // worker reads `job`; the task outlives the job, which ends before this function returns.
    unsafe {
        let erased: Task = std::mem::transmute::<&(dyn Fn(usize) + Sync), Task>(task);
        *shared.job.get() = Job {
            task: erased,
            parts,
        };
    }
    shared.remaining.store(shared.workers, Ordering::Relaxed);
    shared.generation.fetch_add(1, Ordering::SeqCst);
    if shared.sleepers.load(Ordering::SeqCst) > 0 {
        let _guard = shared.lock.lock().unwrap_or_else(|e| e.into_inner());
        shared.wake.notify_all();
    }
    // The workers may still be running `task` when part 0 panics: wait for them first.
    let own = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| task(0)));
    let mut spins = 0u32;
    while shared.remaining.load(Ordering::Acquire) != 0 {
        spins = spins.wrapping_add(1);
        if spins.is_multiple_of(1024) {
            std::thread::yield_now(); // a worker descheduled by the host: let it run
        } else {
            std::hint::spin_loop();
        }
    }
    let panicked = shared.panicked.swap(false, Ordering::Relaxed);
    shared.busy.store(false, Ordering::Release);
    if let Err(payload) = own {
        std::panic::resume_unwind(payload);
    }
    assert!(!panicked, "a part of a split piece panicked on a worker");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_runs_once_from_many_callers_and_after_the_workers_park() {
        let callers: Vec<_> = (0..4)
            .map(|caller| {
                std::thread::spawn(move || {
                    for round in 0..200 {
                        let parts = 1 + (caller + round) % 3;
                        let counts: Vec<AtomicUsize> =
                            (0..parts).map(|_| AtomicUsize::new(0)).collect();
                        fork_join(parts, &|part| {
                            counts[part].fetch_add(1, Ordering::Relaxed);
                        });
                        assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 1));
                    }
                })
            })
            .collect();
        for caller in callers {
            caller.join().expect("no caller panics");
        }
        // Long enough for the workers to park; the next job must wake them.
        std::thread::sleep(SPIN * 3);
        let counts: Vec<AtomicUsize> = (0..2).map(|_| AtomicUsize::new(0)).collect();
        fork_join(2, &|part| {
            counts[part].fetch_add(1, Ordering::Relaxed);
        });
        assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 1));
        fork_join(0, &|_| panic!("no part to run"));
    }

    #[test]
    fn a_panicking_part_panics_the_caller_after_every_part_ended_and_the_pool_goes_on() {
        for panicking in [0, 1] {
            let finished = AtomicUsize::new(0);
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                fork_join(2, &|part| {
                    if part == panicking {
                        panic!("part {part}");
                    }
                    finished.fetch_add(1, Ordering::SeqCst);
                })
            }));
            assert!(
                outcome.is_err(),
                "part {panicking}'s panic reaches the caller"
            );
            assert_eq!(
                finished.load(Ordering::SeqCst),
                1,
                "the other part ran to its end"
            );
        }
        let counts: Vec<AtomicUsize> = (0..2).map(|_| AtomicUsize::new(0)).collect();
        fork_join(2, &|part| {
            counts[part].fetch_add(1, Ordering::Relaxed);
        });
        assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 1));
    }
}
