//! The JIT: loop IR kernels → machine code for the host (Cranelift), and running it over a
//! table of `f32` buffers on several threads. All of cnnc's `unsafe` lives in this file.
//!
//! Pipeline of [`Compiled::new`], one step each:
//! 1. check: every access of every kernel is proven in bounds for the given buffer lengths,
//!    and every name exists (`bounds.rs`) — the generated loads and stores are unchecked;
//! 2. split: each kernel becomes pieces, one function each (`pieces.rs`):
//!    sequential runs of top-level statements, and each top-level `parallel` loop;
//! 3. translate: loop IR → Cranelift IR (`translate.rs`, `math.rs` for exp and ln);
//! 4. compile: Cranelift compiles each piece for the host ISA found by `cranelift-native` (so
//!    `fma` becomes `vfmadd` where the CPU has FMA), the pieces in parallel on rayon's pool;
//! 5. define and finalize: `cranelift-jit` places each piece's bytes and maps the code.
//!
//! [`Compiled::run`] checks the buffer table against the lengths compiled for, then runs the
//! pieces of a kernel in order. A parallel piece's range is split into up to `threads`
//! contiguous parts, part 0 run by the calling thread and the others by workers that spin
//! between jobs (`pool.rs`; as many as rayon's global pool has threads beyond one, which the
//! CLI sizes with `rayon::ThreadPoolBuilder::build_global` and `--threads`): as many parts as
//! give each at least [`MIN_WORK_PER_PART`] of the piece's work, estimated at compile time
//! from its loop nest (`pieces::work`), so that a tiny piece runs in one part instead of
//! paying for a dispatch it cannot win back (see [`parts`]). A parallel loop is split only
//! when `disjoint.rs` proves its iterations touch disjoint elements of what they write (no data
//! race); the lowering keeps every reduction inside one iteration, so results are bitwise
//! identical for every thread count.

mod blocked;
mod bounds;
mod disjoint;
mod math;
mod pieces;
mod pool;
mod translate;
mod vector;

#[cfg(test)]
mod random_kernels;
#[cfg(test)]
mod test_kernels;

use std::fmt;
use std::mem::ManuallyDrop;
use std::time::Instant;

use cranelift_codegen::control::ControlPlane;
use cranelift_codegen::ir::UserFuncName;
use cranelift_codegen::isa::{OwnedTargetIsa, TargetIsa};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_codegen::Context;
use cranelift_frontend::FunctionBuilderContext;
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, FuncId, Module, ModuleReloc};
use rayon::prelude::*;

use crate::lower::loops::{BufId, Kernel};
use crate::lower::memory::{self, Layout, Region};
use pieces::Piece;

/// Why a kernel cannot be compiled or run. Every variant names the kernel or buffer at fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JitError {
    /// A kernel names a buffer outside the table.
    UnknownBuffer {
        kernel: String,
        buffer: u32,
        table_len: usize,
    },
    /// An access can leave its buffer: its index ranges over `min_index ..= max_index`.
    OutOfBounds {
        kernel: String,
        buffer: u32,
        len: usize,
        min_index: i128,
        max_index: i128,
    },
    /// A kernel breaks a rule of the loop IR (unbound variable, undeclared local, ...).
    Malformed { kernel: String, what: String },
    /// `run` was asked for a kernel index that was not compiled.
    NoSuchKernel { index: usize, count: usize },
    /// `run` got a buffer table whose lengths differ from those compiled for.
    BufferLength {
        buffer: usize,
        expected: Option<usize>,
        found: Option<usize>,
    },
    /// Cranelift rejected the generated code or the host (a bug of cnnc, reported not hidden).
    Codegen { kernel: String, message: String },
}

impl fmt::Display for JitError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            JitError::UnknownBuffer { kernel, buffer, table_len } => {
                write!(f, "kernel `{kernel}` uses buffer {buffer}, but the table has {table_len} buffers")
            }
            JitError::OutOfBounds { kernel, buffer, len, min_index, max_index } => write!(
                f,
                "kernel `{kernel}` can access buffer {buffer} (length {len}) at indices {min_index} ..= {max_index}"
            ),
            JitError::Malformed { kernel, what } => write!(f, "kernel `{kernel}` is malformed: {what}"),
            JitError::NoSuchKernel { index, count } => {
                write!(f, "no kernel {index}: {count} kernels were compiled")
            }
            JitError::BufferLength { buffer, expected, found } => {
                let show = |len: &Option<usize>| len.map_or("no buffer".to_string(), |n| format!("length {n}"));
                write!(f, "buffer {buffer}: compiled for {}, given {}", show(expected), show(found))
            }
            JitError::Codegen { kernel, message } => {
                write!(f, "Cranelift failed on kernel `{kernel}`: {message}")
            }
        }
    }
}

impl std::error::Error for JitError {}

/// The `f32` buffers a plan's kernels read and write: views into one arena allocated once,
/// laid out by a [`Layout`] (buffers whose live ranges never overlap may share memory; see
/// `lower::memory`). Each view is accessed through `get`/`get_mut`, which borrow the whole
/// table, so no two `&mut` slices ever exist at once; `pair_mut` hands out a writable and a
/// readable one together, and checks that they do not overlap.
#[derive(Debug, Default)]
pub struct Buffers {
    arena: Vec<f32>,
    /// Index in `arena` of the first element of the 64-byte-aligned workspace.
    start: usize,
    /// Length of the workspace in `f32`s (`arena` has up to a cache line more).
    workspace_len: usize,
    regions: Vec<Region>,
    /// Base pointers handed to generated code, refreshed from `arena` by each `run`; never
    /// dereferenced in Rust.
    table: Vec<*mut f32>,
}

// SAFETY: `table` is scratch memory holding addresses into `arena`, rewritten before every use
// under `&mut Buffers`; the type otherwise owns plain `f32`s.
unsafe impl Send for Buffers {}
// SAFETY: `&Buffers` only reads `arena` and `regions`; `table` is touched only through `&mut`.
unsafe impl Sync for Buffers {}

impl Buffers {
    /// Zero-filled buffers of the given lengths, each in its own memory.
    pub fn new(lens: &[usize]) -> Buffers {
        Buffers::with_layout(&Layout::unshared(lens))
    }

    /// Zero-filled buffers placed as `layout` says.
    ///
    /// # Panics
    /// When the allocator cannot give the workspace (see [`Buffers::try_with_layout`]).
    pub fn with_layout(layout: &Layout) -> Buffers {
        Buffers::try_with_layout(layout).expect("the workspace is allocated")
    }

    /// Zero-filled buffers placed as `layout` says, or `None` when the allocator cannot give
    /// the workspace: an absurd batch is then an error rather than an abort.
    pub fn try_with_layout(layout: &Layout) -> Option<Buffers> {
        // Up to one cache line of slack, so that the workspace can start on a 64-byte boundary.
        let len = layout.arena_len.checked_add(memory::ALIGN - 1)?;
        let mut arena = Vec::new();
        arena.try_reserve_exact(len).ok()?;
        arena.resize(len, 0.0f32);
        let start = match arena.as_mut_ptr().align_offset(memory::ALIGN * 4) {
            offset if offset < memory::ALIGN => offset,
            _ => 0,
        };
        assert!(
            layout
                .regions
                .iter()
                .all(|r| r.offset + r.len <= layout.arena_len),
            "a layout's regions lie inside its arena"
        );
        Some(Buffers {
            arena,
            start,
            workspace_len: layout.arena_len,
            regions: layout.regions.clone(),
            table: vec![std::ptr::null_mut(); layout.regions.len()],
        })
    }

    fn range(&self, b: BufId) -> std::ops::Range<usize> {
        let region = self.regions[b.0 as usize];
        let first = self.start + region.offset;
        first..first + region.len
    }

    /// Buffer `b`. Panics if `b` is not in the table (a `BufId` comes from the plan, never from
    /// user input).
    pub fn get(&self, b: BufId) -> &[f32] {
        &self.arena[self.range(b)]
    }

    /// Buffer `b`, writable; its length is fixed. Panics as [`Buffers::get`].
    pub fn get_mut(&mut self, b: BufId) -> &mut [f32] {
        let range = self.range(b);
        &mut self.arena[range]
    }

    pub fn lens(&self) -> Vec<usize> {
        self.regions.iter().map(|r| r.len).collect()
    }

    /// Bytes of the workspace: every buffer, shared memory counted once.
    pub fn bytes(&self) -> usize {
        self.workspace_len * std::mem::size_of::<f32>()
    }

    /// Buffer `write` writable and buffer `read` readable at once, without allocating (the
    /// optimiser's step, parameter by parameter).
    ///
    /// # Panics
    /// If the two share memory (never for the plan's persistent buffers).
    pub fn pair_mut(&mut self, write: BufId, read: BufId) -> (&mut [f32], &[f32]) {
        let (w, r) = (self.range(write), self.range(read));
        assert!(
            w.end <= r.start || r.end <= w.start,
            "buffers {write:?} and {read:?} overlap"
        );
        if w.start < r.start {
            let (low, high) = self.arena.split_at_mut(r.start);
            (&mut low[w], &high[..r.len()])
        } else {
            let (low, high) = self.arena.split_at_mut(w.start);
            (&mut high[..w.len()], &low[r])
        }
    }

    /// The table of base pointers generated code reads, one per `BufId`, freshly derived from
    /// the arena.
    fn pointer_table(&mut self) -> *const *mut f32 {
        let base = self.arena.as_mut_ptr();
        for (slot, region) in self.table.iter_mut().zip(&self.regions) {
            // In bounds: `with_layout` checked every region against the arena.
            *slot = base.wrapping_add(self.start + region.offset);
        }
        self.table.as_ptr()
    }
}

impl Clone for Buffers {
    /// A copy with its own arena (aligned afresh) and the same layout and contents.
    fn clone(&self) -> Buffers {
        let arena_len = self.workspace_len;
        let layout = Layout {
            regions: self.regions.clone(),
            shared: Vec::new(),
            arena_len,
        };
        let mut copy = Buffers::with_layout(&layout);
        let (from, to) = (self.start, copy.start);
        copy.arena[to..to + arena_len].copy_from_slice(&self.arena[from..from + arena_len]);
        copy
    }
}

impl PartialEq for Buffers {
    /// Equal when every buffer has the same contents, wherever the layouts put them.
    fn eq(&self, other: &Buffers) -> bool {
        self.regions.len() == other.regions.len()
            && (0..self.regions.len() as u32).all(|b| self.get(BufId(b)) == other.get(BufId(b)))
    }
}

/// A generated function: `(table, lo, hi)`, see `translate.rs`.
type PieceFn = unsafe extern "C" fn(*const *mut f32, i64, i64);

struct CompiledPiece {
    entry: PieceFn,
    /// `Some(extent)` for a top-level parallel loop, which may be split over threads.
    parallel_extent: Option<usize>,
    /// Estimated work of the whole piece (`pieces::work`), which bounds how many parts it is
    /// split into.
    work: u64,
}

/// The least estimated work (`pieces::work`, scalar operations) worth a part of its own when a
/// parallel piece is split over threads. Measured on the development machine (2 cores shared
/// with other work, 2026-11-30, `cnnc bench models/lenet.cnn --batch 64 --threads 2 --layers`,
/// each kernel with every piece split and with none): splitting a tiny piece costs about 12 µs
/// over running it on the calling thread when the second thread is awake; generated code runs
/// 3 (average pooling) to 90 (vectorised dense) estimated operations per ns, 20–40 for the
/// blocked conv nests, so a part needs some 240,000 operations to win its dispatch back. With
/// rayon's workers, which sleep between jobs, waking one cost more, and this was 2^20 (batch-1
/// training on 2 threads had run at 4,330–4,670 images/s against 7,800–7,970). With `pool.rs`'s
/// spinning workers (2026-12-02, Intel host, `cnnc bench models/lenet.cnn --threads 2 --batch
/// 256/64/8/1 --format json`, 3 alternating runs): 2^18 trains at 26,400–27,300 images/s at
/// batch 256 against 25,400–26,100 at 2^20, 27,300–27,500 against 25,500–26,500 at batch 64,
/// the same at 8, and 10,500–11,000 against 11,200–11,300 at batch 1; 2^16 loses 17% at
/// batch 1 for nothing more at 64 and 256.
pub const MIN_WORK_PER_PART: u64 = 1 << 18;

/// Choices of how kernels are compiled; [`Compiled::new`] uses the default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompileOptions {
    /// Run contraction nests register-blocked (`blocked.rs`) and legal innermost loops four
    /// iterations at a time in `f32x4` (`vector.rs`). The results are bitwise the same either
    /// way; `false` exists to test and measure that.
    pub vectorize: bool,
    /// The least estimated work a part of a split parallel piece gets ([`MIN_WORK_PER_PART`]
    /// by default); 0 splits every parallel piece over as many threads as it has iterations,
    /// which tests use to exercise splitting on small kernels. Results do not depend on it.
    pub min_work_per_part: u64,
}

impl Default for CompileOptions {
    fn default() -> CompileOptions {
        CompileOptions {
            vectorize: true,
            min_work_per_part: MIN_WORK_PER_PART,
        }
    }
}

impl CompileOptions {
    /// The defaults, except that every parallel piece is split over as many threads as it has
    /// iterations, however little work it has: what tests of thread-count independence use.
    pub fn always_split() -> CompileOptions {
        CompileOptions {
            min_work_per_part: 0,
            ..CompileOptions::default()
        }
    }
}

/// Every kernel of a plan, compiled; the machine code lives as long as this value.
pub struct Compiled {
    /// Only used to free the code on drop.
    module: ManuallyDrop<JITModule>,
    kernels: Vec<Vec<CompiledPiece>>,
    buffer_lens: Vec<usize>,
    compile_seconds: f64,
    min_work_per_part: u64,
}

// SAFETY: after `new`, `module` is never touched except in `drop` (which has `&mut self`), and
// the function pointers are plain code addresses that any thread may call.
unsafe impl Send for Compiled {}
// SAFETY: as above: nothing reachable from `&Compiled` is mutated.
unsafe impl Sync for Compiled {}

impl Compiled {
    /// Compiles every kernel; `buffer_lens[b]` is the length of buffer `b`. Rejects (with an
    /// error, not a panic) a kernel that names a buffer outside the table, or whose loads or
    /// stores can leave their buffer (see `bounds.rs` for what is proven and how).
    pub fn new(kernels: &[Kernel], buffer_lens: &[usize]) -> Result<Compiled, JitError> {
        Compiled::with_options(kernels, buffer_lens, CompileOptions::default())
    }

    /// [`Compiled::new`] with explicit [`CompileOptions`].
    pub fn with_options(
        kernels: &[Kernel],
        buffer_lens: &[usize],
        options: CompileOptions,
    ) -> Result<Compiled, JitError> {
        let start = Instant::now();
        let mut all_pieces = Vec::with_capacity(kernels.len());
        for kernel in kernels {
            bounds::check_kernel(kernel, buffer_lens)?;
            let pieces = pieces::split_pieces(kernel);
            pieces::check_locals_stay_in_piece(kernel, &pieces)?;
            all_pieces.push(pieces);
        }

        let isa = host_isa().map_err(|message| JitError::Codegen {
            kernel: String::new(),
            message,
        })?;
        let mut module = JITModule::new(JITBuilder::with_isa(isa, default_libcall_names()));
        let ids = match define_pieces(&mut module, kernels, &all_pieces, options) {
            Ok(ids) => ids,
            Err(error) => {
                // SAFETY: no pointer into the module's code was handed out.
                unsafe { module.free_memory() };
                return Err(error);
            }
        };

        let compiled_kernels = ids
            .iter()
            .zip(&all_pieces)
            .map(|(kernel_ids, pieces)| {
                kernel_ids
                    .iter()
                    .zip(pieces)
                    .map(|(&id, piece)| CompiledPiece {
                        // SAFETY: `id` was defined with `piece_signature`, i.e. this `PieceFn`
                        // in the host's default calling convention, and is finalized.
                        entry: unsafe {
                            std::mem::transmute::<*const u8, PieceFn>(
                                module.get_finalized_function(id),
                            )
                        },
                        parallel_extent: match piece {
                            Piece::Sequential(_) => None,
                            Piece::Parallel(lp) => Some(lp.extent),
                        },
                        work: (piece.extent() as u64).saturating_mul(pieces::work(piece.stmts())),
                    })
                    .collect()
            })
            .collect();
        Ok(Compiled {
            module: ManuallyDrop::new(module),
            kernels: compiled_kernels,
            buffer_lens: buffer_lens.to_vec(),
            compile_seconds: start.elapsed().as_secs_f64(),
            min_work_per_part: options.min_work_per_part,
        })
    }

    /// Runs kernel `k` over `bufs`, whose lengths must equal those given to `new` (checked).
    /// Top-level parallel loops are split into up to `threads` contiguous ranges run
    /// concurrently, as many as [`parts`] says (`threads == 0` is taken as 1); the results do
    /// not depend on `threads`.
    pub fn run(&self, k: usize, bufs: &mut Buffers, threads: usize) -> Result<(), JitError> {
        let pieces = self.kernels.get(k).ok_or(JitError::NoSuchKernel {
            index: k,
            count: self.kernels.len(),
        })?;
        self.check_lens(bufs)?;
        let table = Table(bufs.pointer_table());
        for piece in pieces {
            match piece.parallel_extent {
                // SAFETY: the table holds one live buffer per BufId with the lengths the code
                // was checked against (`check_lens`), and `&mut Buffers` excludes other users.
                // Buffers sharing memory are never both used by one kernel (`lower::memory`),
                // so the kernel's distinct buffers are distinct memory.
                None => unsafe { (piece.entry)(table.0, 0, 0) },
                Some(extent) => run_split(
                    piece.entry,
                    table,
                    extent,
                    parts(threads, extent, piece.work, self.min_work_per_part),
                ),
            }
        }
        Ok(())
    }

    pub fn compile_seconds(&self) -> f64 {
        self.compile_seconds
    }

    fn check_lens(&self, bufs: &Buffers) -> Result<(), JitError> {
        let count = self.buffer_lens.len().max(bufs.regions.len());
        for buffer in 0..count {
            let expected = self.buffer_lens.get(buffer).copied();
            let found = bufs.regions.get(buffer).map(|r| r.len);
            if expected != found {
                return Err(JitError::BufferLength {
                    buffer,
                    expected,
                    found,
                });
            }
        }
        Ok(())
    }
}

impl Drop for Compiled {
    fn drop(&mut self) {
        // SAFETY: the function pointers die with `self`; `run` borrows `self`, so none is
        // running, and the module is taken exactly once.
        unsafe { ManuallyDrop::take(&mut self.module).free_memory() }
    }
}

/// The buffer table's address, shared by the threads of one `run`.
#[derive(Clone, Copy)]
struct Table(*const *mut f32);

// SAFETY: the threads of one parallel piece run disjoint iteration ranges, which touch disjoint
// elements of every buffer they write (proven by `disjoint.rs`), and `run` waits for all of them before
// the table and its buffers can be touched again.
unsafe impl Send for Table {}
// SAFETY: as above: the threads only pass the address on to generated code.
unsafe impl Sync for Table {}

/// How many parts a parallel piece of `extent` iterations and estimated `work` runs in on
/// `threads` threads: `min(threads, extent, work / min_work_per_part)`, and at least one (so
/// that an empty loop is still a well-formed, empty range). Every iteration is computed the
/// same way whatever the split, so this decides speed only, never results.
fn parts(threads: usize, extent: usize, work: u64, min_work_per_part: u64) -> usize {
    let worth = match min_work_per_part {
        0 => usize::MAX,
        min => usize::try_from(work / min).unwrap_or(usize::MAX),
    };
    threads.min(extent).min(worth).max(1)
}

/// Runs `entry` over `0 .. extent` split into `parts` (at least 1) contiguous ranges.
fn run_split(entry: PieceFn, table: Table, extent: usize, parts: usize) {
    let range = |part: usize| {
        (
            (extent * part / parts) as i64,
            (extent * (part + 1) / parts) as i64,
        )
    };
    // SAFETY (both calls): as in `Compiled::run`; each call gets a disjoint `[lo, hi)`.
    let call = move |part: usize| {
        let (lo, hi) = range(part);
        let table = table;
        unsafe { entry(table.0, lo, hi) }
    };
    pool::fork_join(parts.max(1), &call);
}

/// Deterministic textual Cranelift IR of one kernel (for `cnnc dump --stage clif`): each piece
/// as translated, before Cranelift's optimisations, headed by a comment saying what it runs.
pub fn clif_text(kernel: &Kernel, buffer_lens: &[usize]) -> Result<String, JitError> {
    bounds::check_kernel(kernel, buffer_lens)?;
    let pieces = pieces::split_pieces(kernel);
    pieces::check_locals_stay_in_piece(kernel, &pieces)?;
    let isa = host_isa().map_err(|message| JitError::Codegen {
        kernel: kernel.name.clone(),
        message,
    })?;
    let signature = translate::piece_signature(isa.default_call_conv(), isa.pointer_type());
    let mut builder_context = FunctionBuilderContext::new();
    let mut text = String::new();
    for (i, piece) in pieces.iter().enumerate() {
        let mut func = cranelift_codegen::ir::Function::with_name_signature(
            UserFuncName::testcase(format!("{}.{i}", kernel.name)),
            signature.clone(),
        );
        translate::translate_piece(
            &mut func,
            &mut builder_context,
            kernel,
            *piece,
            isa.frontend_config(),
            CompileOptions::default(),
        );
        let what = match piece {
            Piece::Sequential(_) => "sequential".to_string(),
            Piece::Parallel(lp) => format!("parallel over v{} in 0..{}", lp.var.0, lp.extent),
        };
        text.push_str(&format!(
            "; {} piece {i}: {what}\n{}\n",
            kernel.name,
            func.display()
        ));
    }
    Ok(text)
}

/// Declares, translates and defines every piece, then finalizes; returns the ids by kernel.
fn define_pieces(
    module: &mut JITModule,
    kernels: &[Kernel],
    all_pieces: &[Vec<Piece>],
    options: CompileOptions,
) -> Result<Vec<Vec<cranelift_module::FuncId>>, JitError> {
    let signature = translate::piece_signature(
        module.isa().default_call_conv(),
        module.isa().pointer_type(),
    );
    let mut ids = Vec::with_capacity(kernels.len());
    let mut jobs = Vec::new();
    for (k, pieces) in all_pieces.iter().enumerate() {
        let mut kernel_ids = Vec::with_capacity(pieces.len());
        for (index, piece) in pieces.iter().enumerate() {
            let id =
                module
                    .declare_anonymous_function(&signature)
                    .map_err(|e| JitError::Codegen {
                        kernel: kernels[k].name.clone(),
                        message: e.to_string(),
                    })?;
            kernel_ids.push(id);
            jobs.push((k, index, *piece, id));
        }
        ids.push(kernel_ids);
    }
    // The functions are compiled independently (a `Context` each, constants in their own
    // code, a libcall, if any, left as a relocation the module resolves when it places the
    // bytes), so on every thread of the pool; only placing them in the module is one by one.
    // The JIT compile time of LeNet roughly halves on 2 threads.
    let isa = module.isa();
    let compiled: Vec<Result<CompiledBytes, JitError>> = jobs
        .par_iter()
        .map_init(
            || (Context::new(), FunctionBuilderContext::new()),
            |(context, builder_context), &(k, index, piece, id)| {
                let kernel = &kernels[k];
                context.clear();
                context.func.signature = signature.clone();
                translate::translate_piece(
                    &mut context.func,
                    builder_context,
                    kernel,
                    piece,
                    isa.frontend_config(),
                    options,
                );
                compile_piece(isa, context, kernel, index, id)
            },
        )
        .collect();
    for (result, &(_, _, _, id)) in compiled.into_iter().zip(&jobs) {
        let code = result?;
        module
            .define_function_bytes(id, code.alignment, &code.bytes, &code.relocs)
            .map_err(|e| JitError::Codegen {
                kernel: code.kernel,
                message: e.to_string(),
            })?;
    }
    module
        .finalize_definitions()
        .map_err(|e| JitError::Codegen {
            kernel: String::new(),
            message: e.to_string(),
        })?;
    Ok(ids)
}

/// One piece's machine code, ready to be placed in the module.
struct CompiledBytes {
    kernel: String,
    alignment: u64,
    bytes: Vec<u8>,
    relocs: Vec<ModuleReloc>,
}

/// Compiles the function in `context` (piece `index` of `kernel`, to be defined as `id`).
fn compile_piece(
    isa: &dyn TargetIsa,
    context: &mut Context,
    kernel: &Kernel,
    index: usize,
    id: FuncId,
) -> Result<CompiledBytes, JitError> {
    // A developer's aid: `CNNC_DISASM=<kernel name>` prints that kernel's machine code
    // (regalloc's spills and moves show there, not in the CLIF dump).
    let disasm = std::env::var("CNNC_DISASM").is_ok_and(|name| name == kernel.name);
    context.set_disasm(disasm);
    context
        .compile(isa, &mut ControlPlane::default())
        .map_err(|e| JitError::Codegen {
            kernel: kernel.name.clone(),
            message: format!("{:?}", e.inner),
        })?;
    let code = context
        .compiled_code()
        .expect("a compiled context has its code");
    if let Some(vcode) = code.vcode.as_ref().filter(|_| disasm) {
        eprintln!("machine code of {}, piece {index}:\n{vcode}", kernel.name);
    }
    let relocs = code
        .buffer
        .relocs()
        .iter()
        .map(|reloc| ModuleReloc::from_mach_reloc(reloc, &context.func, id))
        .collect();
    Ok(CompiledBytes {
        kernel: kernel.name.clone(),
        alignment: u64::from(code.buffer.alignment),
        bytes: code.code_buffer().to_vec(),
        relocs,
    })
}

/// The host's ISA with every feature `cranelift-native` detects (FMA, SSE4.1 `round`, ...).
fn host_isa() -> Result<OwnedTargetIsa, String> {
    let mut flags = settings::builder();
    let set = |flags: &mut settings::Builder, name: &str, value: &str| {
        flags
            .set(name, value)
            .map_err(|e| format!("setting {name}={value}: {e}"))
    };
    // `speed`, by measurement on this machine: a scalar conv nest (8×16×16×16 input, 32 3×3
    // filters, best of 30 runs, one thread) ran in 18–21 ms with `speed` and 48–99 ms with
    // `none`, because the translation recomputes each address from the loop variables and
    // relies on the optimiser's GVN and loop-invariant code motion to hoist that work. (Issue
    // 5 measured the reverse on hand-scheduled micro-kernels: when those arrive, they get
    // their own ISA with `none`.)
    set(&mut flags, "opt_level", "speed")?;
    // The verifier catches a translation bug as an error instead of bad code; it costs compile
    // time, so it runs in debug builds and tests only.
    set(
        &mut flags,
        "enable_verifier",
        if cfg!(any(test, debug_assertions)) {
            "true"
        } else {
            "false"
        },
    )?;
    // Required by cranelift-jit: calls (to libcalls) may need long-range relocations.
    set(&mut flags, "use_colocated_libcalls", "false")?;
    set(&mut flags, "is_pic", "false")?;
    let isa_builder =
        cranelift_native::builder().map_err(|e| format!("host not supported: {e}"))?;
    isa_builder
        .finish(settings::Flags::new(flags))
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::test_kernels::{index, kernel, load, lp, ramp};
    use super::*;
    use crate::lower::loops::{Expr, Local, Stmt, UnOp};

    /// `pair_mut` gives the two buffers asked for, whichever lies first in the arena.
    #[test]
    fn pair_mut_gives_both_buffers_in_either_order() {
        let mut bufs = Buffers::new(&[3, 2, 4]);
        bufs.get_mut(BufId(0)).copy_from_slice(&[1.0, 2.0, 3.0]);
        bufs.get_mut(BufId(2))
            .copy_from_slice(&[4.0, 5.0, 6.0, 7.0]);
        for (write, read) in [(BufId(0), BufId(2)), (BufId(2), BufId(0))] {
            let expected = bufs.get(read).to_vec();
            let (w, r) = bufs.pair_mut(write, read);
            assert_eq!(r, &expected[..]);
            w[0] += 10.0;
        }
        assert_eq!(bufs.get(BufId(0)), &[11.0, 2.0, 3.0]);
        assert_eq!(bufs.get(BufId(2)), &[14.0, 5.0, 6.0, 7.0]);
        assert_eq!(bufs.get(BufId(1)), &[0.0, 0.0]);
    }

    /// Sequential init, a parallel loop with an inner reduction, then a sequential pass that
    /// reads every row's result: the pieces must run in order and the split must not matter.
    fn three_piece_kernel(rows: usize, cols: usize) -> Kernel {
        let init = lp(
            0,
            rows,
            false,
            vec![Stmt::Store(BufId(1), index(&[(0, 1)], 0), Expr::Const(0.5))],
        );
        let reduce = lp(
            0,
            rows,
            true,
            vec![
                lp(
                    1,
                    cols,
                    false,
                    vec![Stmt::Accumulate(
                        BufId(1),
                        index(&[(0, 1)], 0),
                        Expr::Unary(UnOp::Exp, load(0, &[(0, cols as i64), (1, 1)], 0)),
                    )],
                ),
                Stmt::Let(Local(0), Expr::Unary(UnOp::Ln, load(1, &[(0, 1)], 0))),
                Stmt::Store(BufId(1), index(&[(0, 1)], 0), Expr::Local(Local(0))),
            ],
        );
        let total = lp(
            0,
            rows,
            false,
            vec![Stmt::Accumulate(
                BufId(2),
                index(&[], 0),
                *load(1, &[(0, 1)], 0),
            )],
        );
        kernel(2, 1, vec![init, reduce, total])
    }

    #[test]
    fn results_are_bitwise_identical_for_one_two_and_three_threads() {
        let (rows, cols) = (7, 13);
        let x = ramp(rows * cols, 0.77, 0.3);
        let lens = [rows * cols, rows, 1];
        let compiled = Compiled::with_options(
            &[three_piece_kernel(rows, cols)],
            &lens,
            CompileOptions::always_split(),
        )
        .expect("kernel compiles");
        let results: Vec<Buffers> = [1, 2, 3, 8]
            .iter()
            .map(|&threads| {
                let mut bufs = Buffers::new(&lens);
                bufs.get_mut(BufId(0)).copy_from_slice(&x);
                compiled.run(0, &mut bufs, threads).expect("kernel runs");
                bufs
            })
            .collect();
        for other in &results[1..] {
            assert_eq!(other, &results[0]);
        }
        // And they are the right numbers: ln(0.5 + Σ exp) per row, within the math's bounds
        // (relative 1e-6 for the f32 sum of 13 terms and exp/ln's own errors).
        let mut expected_total = 0.0f64;
        for r in 0..rows {
            let sum: f64 = 0.5
                + (0..cols)
                    .map(|c| (x[r * cols + c] as f64).exp())
                    .sum::<f64>();
            let got = results[0].get(BufId(1))[r] as f64;
            assert!(
                (got - sum.ln()).abs() <= 1e-6 * sum.ln().abs().max(1.0),
                "row {r}: {got} vs {}",
                sum.ln()
            );
            expected_total += got;
        }
        assert!(
            (results[0].get(BufId(2))[0] as f64 - expected_total).abs()
                <= 1e-5 * expected_total.abs()
        );
    }

    /// The work estimate of a known piece, and the parts it gives: a tiny parallel piece runs
    /// in one part on any number of threads; a big one is split over every thread (but never
    /// into more parts than iterations); `always_split` splits whatever the work.
    #[test]
    fn a_tiny_parallel_piece_runs_in_one_part() {
        let compiled =
            Compiled::new(&[three_piece_kernel(7, 13)], &[91, 7, 1]).expect("kernel compiles");
        let piece = &compiled.kernels[0][1];
        assert_eq!(piece.parallel_extent, Some(7));
        // Per row: 13 × (accumulate 1 + exp 12 + load 1), let 1 + ln 12 + load 1, store 1 + 1.
        assert_eq!(piece.work, 7 * (13 * 14 + 14 + 2));
        for threads in [1, 2, 3, 8] {
            assert_eq!(parts(threads, 7, piece.work, MIN_WORK_PER_PART), 1);
        }
        assert_eq!(parts(2, 7, piece.work, 0), 2);
        assert_eq!(parts(8, 7, piece.work, 0), 7);

        let (rows, cols) = (64, 16384);
        let big = Compiled::new(&[three_piece_kernel(rows, cols)], &[rows * cols, rows, 1])
            .expect("kernel compiles");
        let piece = &big.kernels[0][1];
        assert!(piece.work >= 8 * MIN_WORK_PER_PART, "{}", piece.work);
        assert_eq!(parts(1, rows, piece.work, MIN_WORK_PER_PART), 1);
        assert_eq!(parts(2, rows, piece.work, MIN_WORK_PER_PART), 2);
        assert_eq!(parts(8, rows, piece.work, MIN_WORK_PER_PART), 8);
        assert_eq!(parts(8, 3, piece.work, MIN_WORK_PER_PART), 3);
        // Just enough work for two parts, not three.
        assert_eq!(
            parts(3, rows, 2 * MIN_WORK_PER_PART + 1, MIN_WORK_PER_PART),
            2
        );
        assert_eq!(parts(0, 0, 0, MIN_WORK_PER_PART), 1);
    }

    #[test]
    fn empty_and_single_iteration_parallel_loops_run_on_any_thread_count() {
        let store = |var| Stmt::Store(BufId(0), index(&[(var, 1)], 0), Expr::Const(2.0));
        let body = vec![
            lp(0, 0, true, vec![store(0)]),
            lp(1, 1, true, vec![store(1)]),
        ];
        for threads in [0, 1, 2] {
            let compiled =
                Compiled::new(&[kernel(2, 0, body.clone())], &[1]).expect("kernel compiles");
            let mut bufs = Buffers::new(&[1]);
            compiled.run(0, &mut bufs, threads).expect("kernel runs");
            assert_eq!(bufs.get(BufId(0)), &[2.0], "{threads} threads");
        }
    }

    #[test]
    fn run_rejects_a_wrong_table_and_an_unknown_kernel() {
        let compiled =
            Compiled::new(&[three_piece_kernel(2, 3)], &[6, 2, 1]).expect("kernel compiles");
        let mut short = Buffers::new(&[6, 2]);
        assert_eq!(
            compiled.run(0, &mut short, 1),
            Err(JitError::BufferLength {
                buffer: 2,
                expected: Some(1),
                found: None
            })
        );
        let mut wrong = Buffers::new(&[6, 3, 1]);
        assert_eq!(
            compiled.run(0, &mut wrong, 1),
            Err(JitError::BufferLength {
                buffer: 1,
                expected: Some(2),
                found: Some(3)
            })
        );
        let mut right = Buffers::new(&[6, 2, 1]);
        assert_eq!(
            compiled.run(1, &mut right, 1),
            Err(JitError::NoSuchKernel { index: 1, count: 1 })
        );
    }

    #[test]
    fn a_local_used_across_a_parallel_loop_is_rejected() {
        let body = vec![
            Stmt::Let(Local(0), Expr::Const(2.0)),
            lp(
                0,
                4,
                true,
                vec![Stmt::Store(
                    BufId(0),
                    index(&[(0, 1)], 0),
                    Expr::Local(Local(0)),
                )],
            ),
        ];
        let error = Compiled::new(&[kernel(1, 1, body)], &[4])
            .err()
            .expect("rejected");
        assert!(
            matches!(&error, JitError::Malformed { what, .. } if what.contains("l0")),
            "{error}"
        );
    }

    #[test]
    fn clif_text_is_deterministic_and_shows_each_piece() {
        let kernel = three_piece_kernel(7, 13);
        let text = clif_text(&kernel, &[91, 7, 1]).expect("kernel translates");
        assert_eq!(
            text,
            clif_text(&kernel, &[91, 7, 1]).expect("kernel translates")
        );
        assert_eq!(text.matches("function %").count(), 3, "{text}");
        assert!(
            text.contains("; test.forward piece 1: parallel over v0 in 0..7"),
            "{text}"
        );
        assert!(text.contains("fma"), "the inline exp uses fma: {text}");
    }

    #[test]
    fn compile_time_is_recorded() {
        let compiled =
            Compiled::new(&[three_piece_kernel(2, 3)], &[6, 2, 1]).expect("kernel compiles");
        assert!(compiled.compile_seconds() > 0.0);
    }
}
