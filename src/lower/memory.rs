//! Memory planning: which buffers of a [`Plan`] can share storage, and where each one lives in
//! the single arena (workspace) an engine allocates once.
//!
//! Rules, in the order the runtime runs the schedules (training: `train_forward`, `loss`,
//! `backward`, then the optimiser, which only touches parameters and their gradients;
//! inference: `infer`):
//! - A buffer's *live range* in a sequence is the span of kernel positions from the first to
//!   the last kernel that reads or writes it. `Accumulate` (`+=`) counts as a read as well as a
//!   write. Ranges are inclusive: a buffer last read by a kernel and one first written by the
//!   same kernel overlap, so a kernel never sees two of its buffers in the same memory.
//! - Only activations, their gradients and the layers' working copies (`Value`, `Grad`,
//!   `Scratch`) may share, and only when the first
//!   kernel touching them in every sequence writes them without reading them (so no value
//!   crosses from one step to the next). Every other role (input, labels or target, parameters
//!   and their gradients, loss, masks, saved statistics, and any role added later) is
//!   *persistent*: the runtime reads or writes it between kernels. So are the buffers the
//!   caller names (the network's output, read after each schedule).
//! - The outputs of the plan's parameter-only kernels (`Plan::derived`, weight packing) are
//!   *held*, live over the whole of `infer`, while the arena stays within 1/8 above its size
//!   without holding (all of them if they fit, else smallest first; holding costs memory only
//!   where inference is not already the peak, as at batch 1): nothing of `infer` shares their memory, so inference may skip
//!   those kernels while no parameter has changed and read what a previous inference left
//!   ([`kept_over`] is what the runtime checks). In training they share as usual, and the
//!   runtime reruns them before the next inference (`runtime::engine`).
//! - Two shareable buffers may overlap in memory only if their live ranges are disjoint in
//!   every sequence where both appear. Offsets are assigned greedily, largest buffer first, at
//!   the lowest 64-byte-aligned offset clear of every conflicting buffer already placed.
//!
//! Because no two buffers one kernel touches ever overlap, the JIT's per-kernel assumption that
//! distinct buffers are distinct memory still holds.

use std::collections::BTreeSet;

use super::loops::{visit_uses, BufId, Kernel, Use};
use super::step::{BufferDecl, BufferRole, Plan};

/// Offsets are multiples of this many `f32`s: 64 bytes, one cache line.
pub const ALIGN: usize = 16;

/// Where one buffer lives in the arena, in `f32`s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub offset: usize,
    pub len: usize,
}

impl Region {
    fn end(&self) -> usize {
        self.offset + self.len
    }
}

/// The arena's layout: `regions[b]` for `BufId(b)`, and which buffers share memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub regions: Vec<Region>,
    /// `true` for buffers whose memory other buffers may reuse when they are dead.
    pub shared: Vec<bool>,
    /// Length of the arena in `f32`s (the end of the last region, aligned).
    pub arena_len: usize,
}

impl Layout {
    /// Every buffer in its own aligned region, one after the other (no sharing).
    pub fn unshared(lens: &[usize]) -> Layout {
        let mut next = 0;
        let regions = lens
            .iter()
            .map(|&len| {
                let region = Region { offset: next, len };
                next = align(region.end());
                region
            })
            .collect();
        Layout {
            regions,
            shared: vec![false; lens.len()],
            arena_len: next,
        }
    }

    pub fn bytes(&self) -> usize {
        self.arena_len * std::mem::size_of::<f32>()
    }
}

fn align(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

/// The planned layout of `plan`'s buffers; `keep` names buffers the runtime reads after a
/// schedule besides those whose role makes them persistent (the network's output).
pub fn layout(plan: &Plan, keep: &[BufId]) -> Layout {
    let sequences = [
        plan.train_forward
            .iter()
            .copied()
            .chain([plan.loss])
            .chain(plan.backward.iter().copied())
            .collect(),
        plan.infer.clone(),
    ];
    // Derived outputs are held over `infer` while the arena stays within budget: all of them if
    // they fit, else one by one, smallest first. Holding costs memory only where inference is
    // not already the peak, as at batch 1.
    let unheld = assign(&plan.buffers, &plan.kernels, &sequences, keep, &[]);
    let budget = unheld.arena_len + unheld.arena_len / HOLD_BUDGET_DIVISOR;
    let mut outputs: Vec<BufId> = plan
        .derived
        .iter()
        .flat_map(|&k| Access::of(&plan.kernels[k]).writes)
        .collect();
    outputs.sort_by_key(|&b| plan.buffers[b.0 as usize].len);
    let all: Vec<(usize, BufId)> = outputs.iter().map(|&b| (1, b)).collect();
    let layout = assign(&plan.buffers, &plan.kernels, &sequences, keep, &all);
    if layout.arena_len <= budget {
        return layout;
    }
    let (mut held, mut best) = (Vec::new(), unheld);
    for b in outputs {
        held.push((1, b));
        let layout = assign(&plan.buffers, &plan.kernels, &sequences, keep, &held);
        if layout.arena_len <= budget {
            best = layout;
        } else {
            held.pop();
        }
    }
    best
}

/// How much a plan's arena may grow, as a fraction `1 / HOLD_BUDGET_DIVISOR` of the arena
/// without held buffers, to keep parameter-only kernels' outputs over inference.
const HOLD_BUDGET_DIVISOR: usize = 8;

/// Whether buffer `b`'s memory is used by no other buffer that a kernel of `sequence` touches:
/// then what `b` holds after one run of `sequence` is still there at the start of the next,
/// unless something outside the sequence writes that memory.
pub fn kept_over(layout: &Layout, kernels: &[Kernel], sequence: &[usize], b: BufId) -> bool {
    let mine = layout.regions[b.0 as usize];
    let touched: BTreeSet<BufId> = sequence
        .iter()
        .flat_map(|&k| {
            let access = Access::of(&kernels[k]);
            access
                .reads
                .union(&access.writes)
                .copied()
                .collect::<Vec<_>>()
        })
        .collect();
    touched.into_iter().all(|other| {
        let r = layout.regions[other.0 as usize];
        other == b
            || r.len == 0
            || mine.len == 0
            || r.end() <= mine.offset
            || mine.end() <= r.offset
    })
}

/// [`layout`] for any buffer table, kernels and sequences of kernel indices run in order;
/// `(s, b)` in `held` makes buffer `b`, if sequence `s` uses it, live over the whole of `s`
/// (its values survive from one run of `s` to the next).
fn assign(
    buffers: &[BufferDecl],
    kernels: &[Kernel],
    sequences: &[Vec<usize>],
    keep: &[BufId],
    held: &[(usize, BufId)],
) -> Layout {
    let accesses: Vec<Access> = kernels.iter().map(Access::of).collect();
    let count = buffers.len();
    // ranges[s][b]: live range of buffer b in sequence s.
    let mut ranges = vec![vec![None; count]; sequences.len()];
    let mut shareable: Vec<bool> = buffers
        .iter()
        .enumerate()
        .map(|(b, decl)| {
            matches!(
                decl.role,
                BufferRole::Value(_) | BufferRole::Grad(_) | BufferRole::Scratch(..)
            ) && !keep.contains(&BufId(b as u32))
        })
        .collect();
    for (sequence, ranges) in sequences.iter().zip(&mut ranges) {
        for (position, &k) in sequence.iter().enumerate() {
            let access = &accesses[k];
            for &b in access.reads.union(&access.writes) {
                let range: &mut Option<(usize, usize)> = &mut ranges[b.0 as usize];
                match range {
                    Some((_, last)) => *last = position,
                    None => {
                        *range = Some((position, position));
                        // Its first kernel reads it: it carries a value in from outside.
                        if access.reads.contains(&b) {
                            shareable[b.0 as usize] = false;
                        }
                    }
                }
            }
        }
    }
    for &(s, b) in held {
        if let Some(range) = &mut ranges[s][b.0 as usize] {
            *range = (0, sequences[s].len() - 1);
        }
    }
    let conflict = |a: usize, b: usize| {
        ranges.iter().any(|r| match (r[a], r[b]) {
            (Some((a0, a1)), Some((b0, b1))) => a0 <= b1 && b0 <= a1,
            _ => false,
        })
    };

    let mut regions = vec![Region { offset: 0, len: 0 }; count];
    let mut next = 0;
    for (b, decl) in buffers.iter().enumerate() {
        if !shareable[b] {
            regions[b] = Region {
                offset: next,
                len: decl.len,
            };
            next = align(regions[b].end());
        }
    }
    let base = next;
    let mut order: Vec<usize> = (0..count).filter(|&b| shareable[b]).collect();
    order.sort_by_key(|&b| std::cmp::Reverse(buffers[b].len));
    let mut placed: Vec<usize> = Vec::new();
    let mut arena_len = base;
    for b in order {
        let len = buffers[b].len;
        let mut taken: Vec<Region> = placed
            .iter()
            .filter(|&&other| conflict(b, other))
            .map(|&other| regions[other])
            .collect();
        taken.sort_by_key(|r| r.offset);
        let mut offset = base;
        for r in &taken {
            if offset + len <= r.offset {
                break;
            }
            offset = offset.max(align(r.end()));
        }
        regions[b] = Region { offset, len };
        arena_len = arena_len.max(align(offset + len));
        placed.push(b);
    }
    Layout {
        regions,
        shared: shareable,
        arena_len,
    }
}

/// Moves each kernel of `sequence` that only stores constants into one buffer (gradient
/// zeroing) to just before the next kernel that uses that buffer, so that the buffer's live
/// range starts where it is needed. Such a kernel commutes with every kernel that does not
/// touch its buffer, so the results are unchanged.
pub fn sink_initialisers(kernels: &[Kernel], sequence: &[usize]) -> Vec<usize> {
    let mut pending: Vec<(BufId, usize)> = Vec::new();
    let mut order = Vec::with_capacity(sequence.len());
    for &k in sequence {
        let access = Access::of(&kernels[k]);
        let initialised = match (access.reads.is_empty(), access.stores_only) {
            (true, true) if access.writes.len() == 1 => access.writes.first().copied(),
            _ => None,
        };
        if let Some(b) = initialised {
            pending.push((b, k));
            continue;
        }
        pending.retain(|&(b, init)| {
            let used = access.reads.contains(&b) || access.writes.contains(&b);
            if used {
                order.push(init);
            }
            !used
        });
        order.push(k);
    }
    // Initialisers whose buffer no later kernel uses keep their place at the end.
    order.extend(pending.into_iter().map(|(_, init)| init));
    order
}

/// The buffers a kernel reads (`Load`, and the targets of `Accumulate`) and writes.
struct Access {
    reads: BTreeSet<BufId>,
    writes: BTreeSet<BufId>,
    /// No `Accumulate` anywhere.
    stores_only: bool,
}

impl Access {
    fn of(kernel: &Kernel) -> Access {
        let mut access = Access {
            reads: BTreeSet::new(),
            writes: BTreeSet::new(),
            stores_only: true,
        };
        visit_uses(&kernel.body, &mut |item| match item {
            Use::Load(b) => {
                access.reads.insert(b);
            }
            Use::Store(b) => {
                access.writes.insert(b);
            }
            Use::Accumulate(b) => {
                access.writes.insert(b);
                access.reads.insert(b);
                access.stores_only = false;
            }
            Use::Local(_) => {}
        });
        access
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::NodeId;
    use crate::lower::loops::{Expr, Index, Loop, Stmt, Var};

    fn at() -> Index {
        Index {
            terms: vec![(Var(0), 1)],
            offset: 0,
        }
    }

    /// `for i in 0..4 { out[i] = in[0][i] + in[1][i] + ... }` (or `+=` when `accumulate`).
    fn kernel(inputs: &[u32], out: u32, accumulate: bool) -> Kernel {
        let sum = inputs
            .iter()
            .map(|&b| Expr::Load(BufId(b), at()))
            .reduce(|a, b| Expr::Binary(super::super::loops::BinOp::Add, a.into(), b.into()))
            .unwrap_or(Expr::Const(0.0));
        let stmt = match accumulate {
            true => Stmt::Accumulate(BufId(out), at(), sum),
            false => Stmt::Store(BufId(out), at(), sum),
        };
        Kernel {
            name: format!("k{out}"),
            vars: 1,
            locals: 0,
            body: vec![Stmt::Loop(Loop {
                var: Var(0),
                extent: 4,
                parallel: false,
                body: vec![stmt],
            })],
        }
    }

    fn decl(role: BufferRole, len: usize) -> BufferDecl {
        BufferDecl {
            name: format!("{role:?}"),
            len,
            role,
        }
    }

    fn overlap(a: Region, b: Region) -> bool {
        a.len > 0 && b.len > 0 && a.offset < b.end() && b.offset < a.end()
    }

    /// A chain input → v1 → v2 → v3 → loss, plus a gradient that is accumulated before it is
    /// ever stored and an activation the caller keeps.
    #[test]
    fn disjoint_ranges_share_overlapping_and_persistent_do_not() {
        let value = |n| BufferRole::Value(NodeId(n));
        let buffers = [
            decl(BufferRole::Input, 40),
            decl(value(1), 100),
            decl(value(2), 50),
            decl(value(3), 100),
            decl(BufferRole::Loss, 4),
            decl(BufferRole::Grad(NodeId(3)), 100),
            decl(value(4), 100),
        ];
        let kernels = [
            kernel(&[0], 1, false),
            kernel(&[1], 2, false),
            kernel(&[2], 3, false),
            kernel(&[3], 4, false),
            kernel(&[4], 5, true),
            kernel(&[5], 6, false),
        ];
        let layout = assign(
            &buffers,
            &kernels,
            &[vec![0, 1, 2, 3, 4, 5]],
            &[BufId(6)],
            &[],
        );
        let r = &layout.regions;
        assert_eq!(
            layout.shared,
            [false, true, true, true, false, false, false]
        );
        assert_eq!(r[1].offset, r[3].offset, "v1 dies before v3 is born: {r:?}");
        assert!(!overlap(r[1], r[2]) && !overlap(r[2], r[3]), "{r:?}");
        for persistent in [0, 4, 5, 6] {
            for other in 0..buffers.len() {
                assert!(
                    other == persistent || !overlap(r[persistent], r[other]),
                    "buffer {persistent} overlaps {other}: {r:?}"
                );
            }
        }
        for (region, decl) in r.iter().zip(&buffers) {
            assert_eq!(region.len, decl.len);
            assert_eq!(region.offset % ALIGN, 0);
            assert!(region.end() <= layout.arena_len);
        }
        let unshared = Layout::unshared(&buffers.each_ref().map(|b| b.len));
        assert!(layout.arena_len < unshared.arena_len);

        // A second sequence in which v1 and v3 are alive together keeps them apart.
        let both = [kernel(&[0], 1, false), kernel(&[1], 3, false)];
        let kernels: Vec<Kernel> = kernels.into_iter().chain(both).collect();
        let layout = assign(
            &buffers,
            &kernels,
            &[vec![0, 1, 2, 3, 4, 5], vec![6, 7]],
            &[BufId(6)],
            &[],
        );
        assert!(!overlap(layout.regions[1], layout.regions[3]));
    }

    /// A buffer held over a sequence (a packed weight that inference keeps) shares memory with
    /// nothing that sequence uses, even before its writer or after its last reader; held over a
    /// sequence that does not use it, it shares as before.
    #[test]
    fn a_held_buffer_keeps_its_memory_over_its_sequence() {
        let value = |n| BufferRole::Value(NodeId(n));
        let buffers = [
            decl(BufferRole::Input, 40),
            decl(value(1), 50),
            decl(BufferRole::Scratch(NodeId(2), "packed_weight"), 100),
            decl(value(2), 100),
            decl(value(3), 100),
            decl(BufferRole::Loss, 4),
        ];
        // v1 = f(input); packed = g(); v2 = h(v1, packed); v3 = k(v2); loss = l(v3).
        let kernels = [
            kernel(&[0], 1, false),
            kernel(&[], 2, false),
            kernel(&[1, 2], 3, false),
            kernel(&[3], 4, false),
            kernel(&[4], 5, false),
        ];
        let sequences = [vec![0, 1, 2, 3, 4], vec![0, 1, 2, 3, 4]];
        let free = assign(&buffers, &kernels, &sequences, &[], &[]);
        let r = &free.regions;
        assert!(overlap(r[2], r[4]), "packed dies before v3 is born: {r:?}");
        assert!(!kept_over(&free, &kernels, &sequences[0], BufId(2)));
        let layout = assign(&buffers, &kernels, &sequences[..1], &[], &[(0, BufId(2))]);
        let r = &layout.regions;
        assert!(layout.shared[2], "held is not persistent");
        assert!(kept_over(&layout, &kernels, &sequences[0], BufId(2)));
        for other in [1, 3, 4] {
            assert!(!overlap(r[2], r[other]), "packed overlaps {other}: {r:?}");
        }
        // Held in a sequence that does not use it: no constraint, as without holding.
        let sequences = [vec![0, 1, 2, 3, 4], vec![3, 4]];
        let layout = assign(&buffers, &kernels, &sequences, &[], &[(1, BufId(2))]);
        assert!(overlap(layout.regions[2], layout.regions[4]));
    }

    /// A kernel storing a constant moves down to just before the first kernel using its buffer;
    /// one whose buffer nobody uses stays, at the end.
    #[test]
    fn initialisers_sink_to_their_first_use() {
        let kernels = [
            kernel(&[], 5, false),
            kernel(&[], 6, false),
            kernel(&[0], 1, false),
            kernel(&[1], 6, true),
            kernel(&[], 7, false),
            kernel(&[6], 5, true),
        ];
        assert_eq!(
            sink_initialisers(&kernels, &[0, 1, 2, 3, 4, 5]),
            [2, 1, 3, 0, 5, 4]
        );
    }

    /// LeNet at batch 256 and ResNet-18 at batch 8: the planned workspace is well below the
    /// unshared one (figures printed for `--nocapture`).
    #[test]
    fn model_workspaces_shrink() {
        for (file, batch, at_most) in [("lenet.cnn", 256, 0.75), ("resnet18.cnn", 8, 0.75)] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("models")
                .join(file);
            let graph = crate::load_file(&path, &mut crate::span::SourceMap::default())
                .unwrap()
                .remove(0);
            let plan = super::super::plan(&graph, batch, crate::ir::Loss::CrossEntropy);
            let output = plan.buffer(BufferRole::Value(graph.output)).unwrap();
            let planned = layout(&plan, &[output]);
            let lens: Vec<usize> = plan.buffers.iter().map(|b| b.len).collect();
            let unshared = Layout::unshared(&lens);
            let mib = |l: &Layout| l.bytes() as f64 / (1024.0 * 1024.0);
            println!(
                "{file} batch {batch}: {:.2} MiB planned, {:.2} MiB unshared",
                mib(&planned),
                mib(&unshared)
            );
            assert!(
                (planned.bytes() as f64) < at_most * unshared.bytes() as f64,
                "{file}: {} vs {}",
                planned.bytes(),
                unshared.bytes()
            );
        }
    }
}
