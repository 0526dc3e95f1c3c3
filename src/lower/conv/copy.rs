//! The data movement around convolution's contraction nests: zero-padded copies (of the input,
//! and of the output gradient for the stride-1 input gradient), packed weights whose lane axis
//! is contiguous, the output gradient transposed to channels-last, and the crop of a padded
//! input gradient. Each fills a scratch buffer right before its consumer.

use super::super::builder::{cst, ix, ixs, KernelBuilder, Tensor};
use super::super::loops::{Expr, Index, Kernel};

/// `dst[n, c, q] = value(src at [n, c, q − shift])` where that lies inside `src`, else 0, for
/// `src [N, C, *S]` and `dst [N, C, *Q]`; parallel over the batch. `value` maps the source
/// coordinates to the copied value (a plain load, or the gradient through a fused activation).
pub fn shifted_copy(
    name: String,
    src: &Tensor,
    dst: &Tensor,
    shift: &[i64],
    value: &dyn Fn(&[Index]) -> Expr,
) -> Kernel {
    spread_copy(name, src, dst, &vec![1; shift.len()], shift, value)
}

/// `dst[n, c, o·stride + shift] = value(src at [n, c, o])` for the source positions `o` that land
/// inside `dst`, and 0 everywhere else (between the spread elements too); parallel over the
/// batch. With strides of 1 it is [`shifted_copy`]; with more, the output gradient of a strided
/// convolution placed at the input positions its elements belong to (`gradient.rs`).
pub fn spread_copy(
    name: String,
    src: &Tensor,
    dst: &Tensor,
    stride: &[i64],
    shift: &[i64],
    value: &dyn Fn(&[Index]) -> Expr,
) -> Kernel {
    let rank = shift.len();
    let mut kb = KernelBuilder::new(name);
    let (n, c) = (kb.var(src.dims[0]), kb.var(src.dims[1]));
    let (source, target) = (&src.dims[2..], &dst.dims[2..]);
    // The source positions that land inside `dst`, per axis: `lo .. hi`, the `o` with
    // `0 <= o·stride + shift < target`.
    let ranges: Vec<(i64, i64)> = (0..rank)
        .map(|d| {
            let (s, t) = (stride[d], target[d] as i64);
            let lo = ((-shift[d]).max(0) + s - 1) / s;
            let hi = (source[d] as i64).min((t - shift[d] + s - 1).div_euclid(s));
            (lo, hi.max(lo))
        })
        .collect();
    let covers_all = (0..rank).all(|d| shift[d] == 0 && stride[d] == 1 && source[d] == target[d]);
    let mut per_image = Vec::new();
    if !covers_all {
        let c0 = kb.var(src.dims[1]);
        let all = kb.vars(target);
        let zero = dst.store(&[vec![ix(n), ix(c0)], ixs(&all)].concat(), cst(0.0));
        per_image.push(kb.for_(c0, kb.nest(&all, vec![zero])));
    }
    let inside: Vec<_> = ranges
        .iter()
        .map(|&(lo, hi)| kb.var((hi - lo) as usize))
        .collect();
    let at_src: Vec<Index> = inside
        .iter()
        .zip(&ranges)
        .map(|(&v, &(lo, _))| ix(v) + lo)
        .collect();
    let at_dst: Vec<Index> = at_src
        .iter()
        .zip(shift)
        .zip(stride)
        .map(|((i, &sh), &st)| i.clone() * st + sh)
        .collect();
    let src_coords = [vec![ix(n), ix(c)], at_src].concat();
    let copy = dst.store(&[vec![ix(n), ix(c)], at_dst].concat(), value(&src_coords));
    per_image.push(kb.for_(c, kb.nest(&inside, vec![copy])));
    let top = kb.parallel_for(n, per_image);
    kb.finish(vec![top])
}

/// `dx[n, c, s] += padded[n, c, s + pad_before]`, parallel over the batch.
pub fn crop_accumulate(name: String, padded: &Tensor, dx: &Tensor, pad_before: &[usize]) -> Kernel {
    let mut kb = KernelBuilder::new(name);
    let (n, c) = (kb.var(dx.dims[0]), kb.var(dx.dims[1]));
    let positions = kb.vars(&dx.dims[2..]);
    let shifted: Vec<Index> = positions
        .iter()
        .zip(pad_before)
        .map(|(&p, &before)| ix(p) + before as i64)
        .collect();
    let at = [vec![ix(n), ix(c)], ixs(&positions)].concat();
    let from = padded.load(&[vec![ix(n), ix(c)], shifted].concat());
    let add = dx.accumulate(&at, from);
    let top = kb.parallel_for(n, vec![kb.for_(c, kb.nest(&positions, vec![add]))]);
    kb.finish(vec![top])
}

/// `packed[g, a, *k, b] = w[g·B + b, a, *k]` (`swap` false: `w [G·B, A, *K]`, the forward's
/// `[g, ci, *k, co]`) or `packed[g, a, *k, b] = w[g·A + a, b, *k]` (`swap` true: `w [G·A, B, *K]`,
/// the input gradient's `[g, co, *k, ci]`).
///
/// `b` runs in blocks of [`PACK_BLOCK`], the blocks split over threads: within a block the
/// writes are a cache line and the reads stay in 16 rows of `w`, which the window and `a` loops
/// walk through in order. With `b` innermost over all of `B` (the first version), each read
/// of the forward's packing touched a new line of `w`: ResNet-18's 512×512×3×3 weights took
/// 6 ms per training step to pack on 2 threads (2026-11-30).
pub fn pack_weight(name: String, w: &Tensor, packed: &Tensor, swap: bool) -> Kernel {
    let mut kb = KernelBuilder::new(name);
    let rank = packed.dims.len();
    let (groups, inner, lanes) = (packed.dims[0], packed.dims[1], packed.dims[rank - 1]);
    let (group_size, inner_len) = (lanes as i64, inner as i64);
    let body = kb.in_blocks(lanes, PACK_BLOCK, |kb, first, width| {
        let (g, a) = (kb.var(groups), kb.var(inner));
        let window = kb.vars(&packed.dims[2..rank - 1]);
        let b = kb.var(width);
        let lane = first + ix(b);
        let source = match swap {
            false => [vec![ix(g) * group_size + lane.clone(), ix(a)], ixs(&window)].concat(),
            true => [vec![ix(g) * inner_len + ix(a), lane.clone()], ixs(&window)].concat(),
        };
        let at = [vec![ix(g), ix(a)], ixs(&window), vec![lane]].concat();
        let copy = packed.store(&at, w.load(&source));
        kb.nest(&[vec![g, a], window, vec![b]].concat(), vec![copy])
    });
    kb.finish(body)
}

/// Lanes of packed weights copied together: 16 `f32`s, one 64-byte cache line.
const PACK_BLOCK: usize = 16;

/// `dy_t[n, *o, c] = value(dy at [n, c, *o])` (channels last, so the weight gradient's lanes over
/// output channels are contiguous); parallel over the batch.
pub fn transpose(
    name: String,
    dy: &Tensor,
    dy_t: &Tensor,
    value: &dyn Fn(&[Index]) -> Expr,
) -> Kernel {
    let mut kb = KernelBuilder::new(name);
    let (n, c) = (kb.var(dy.dims[0]), kb.var(dy.dims[1]));
    let positions = kb.vars(&dy.dims[2..]);
    let from = [vec![ix(n), ix(c)], ixs(&positions)].concat();
    let to = [vec![ix(n)], ixs(&positions), vec![ix(c)]].concat();
    let copy = dy_t.store(&to, value(&from));
    let top = kb.parallel_for(n, vec![kb.for_(c, kb.nest(&positions, vec![copy]))]);
    kb.finish(vec![top])
}
