//! Convolution (`nn.ConvNd`, cross-correlation) over any number of spatial axes: the loops are
//! generated from the rank, so 1-D, 2-D and 3-D share one lowering.
//!
//! Layouts: `x [N, C_in, *S]`, `w [C_out, C_in/G, *K]`, `y [N, C_out, *O]`. Output channel `co`
//! of group `g` reads input channels `g·C_in/G ..`.
//!
//! Loop order, for speed: the innermost loop always runs over the last output axis, so its loads
//! and stores walk rows of `x`, `y` and the gradients, and its iterations do not wait for each
//! other (an FMA chain through one accumulator costs its latency, ~4 cycles, per step). Padding
//! guards on the outer spatial axes sit just above that loop; on the last axis its range is
//! split (see [`Segment`]) so that only the few edge iterations carry a guard.

use super::builder::{cst, fma, ix, ixs, local, set, window_positions, KernelBuilder, Tensor};
use super::loops::{Index, Kernel, Local, Stmt, Var};
use crate::ir::Conv;

/// The tensors of one convolution. `x` and `y` carry the batch axis.
pub struct ConvTensors<'a> {
    pub x: &'a Tensor,
    pub weight: &'a Tensor,
    pub bias: Option<&'a Tensor>,
    pub y: &'a Tensor,
}

/// At most this many weight-gradient accumulators live at once: more spill (the x64 backend
/// ties an FMA's destination to a multiplicand, see issue 7).
const MAX_ACCUMULATORS: usize = 8;

/// Per-axis sizes every kernel needs, read from the IR and the tensors.
struct Dims {
    batch: usize,
    in_spatial: Vec<usize>,
    out_spatial: Vec<usize>,
    in_per_group: usize,
    out_per_group: usize,
    pad_before: Vec<usize>,
}

impl Dims {
    fn new(conv: &Conv, x: &Tensor, y: &Tensor) -> Dims {
        Dims {
            batch: x.dims[0],
            in_spatial: x.dims[2..].to_vec(),
            out_spatial: y.dims[2..].to_vec(),
            in_per_group: conv.in_channels / conv.groups,
            out_per_group: conv.out_channels / conv.groups,
            pad_before: conv.padding.iter().map(|&(before, _)| before).collect(),
        }
    }

    fn last(&self) -> usize {
        self.out_spatial.len() - 1
    }

    /// The input position of the last axis read by output `o` and window offset `k`.
    fn last_position(&self, conv: &Conv, o: Index, k: Index) -> Index {
        let d = self.last();
        o * conv.stride[d] as i64 + k * conv.dilation[d] as i64 - self.pad_before[d] as i64
    }

    /// The ranges of the last output axis: guarded edges around an interior where every
    /// window offset reads inside the input.
    fn segments(&self, conv: &Conv) -> Vec<Segment> {
        let d = self.last();
        let (stride, pad) = (conv.stride[d] as i64, self.pad_before[d] as i64);
        let reach = (conv.kernel[d] as i64 - 1) * conv.dilation[d] as i64;
        let extent = self.out_spatial[d] as i64;
        // Interior: o·s − p >= 0 and o·s + reach − p <= W − 1.
        let lo = ((pad + stride - 1) / stride).min(extent);
        let last_inside = self.in_spatial[d] as i64 - 1 + pad - reach;
        let hi = if last_inside < 0 {
            lo
        } else {
            (last_inside / stride + 1).clamp(lo, extent)
        };
        split(lo, hi, extent)
    }
}

/// A range `start .. start + len` of the last output axis; `guarded` when some window offset
/// reads padding there.
struct Segment {
    start: i64,
    len: usize,
    guarded: bool,
}

impl Segment {
    /// Allocates this segment's loop variable; returns it and the output position it stands for.
    fn var(&self, kb: &mut KernelBuilder) -> (Var, Index) {
        let v = kb.var(self.len);
        (v, ix(v) + self.start)
    }
}

/// The padding guards of the spatial axes before the last, for output `out` and window `window`.
fn outer_bounds(conv: &Conv, dims: &Dims, out: &[Var], window: &[Var]) -> Vec<(Index, usize)> {
    let d = dims.last();
    window_positions(
        &out[..d],
        &window[..d],
        &conv.stride[..d],
        &conv.dilation[..d],
        &dims.pad_before[..d],
    )
    .into_iter()
    .zip(dims.in_spatial.iter().copied())
    .collect()
}

/// The input coordinates `[*outer positions, last]` read by `out[..last]`, `window[..last]`.
fn input_positions(
    conv: &Conv,
    dims: &Dims,
    out: &[Var],
    window: &[Var],
    last: Index,
) -> Vec<Index> {
    let d = dims.last();
    let mut positions = window_positions(
        &out[..d],
        &window[..d],
        &conv.stride[..d],
        &conv.dilation[..d],
        &dims.pad_before[..d],
    );
    positions.push(last);
    positions
}

/// `y[n, co, o] = b[co]`, then `y[n, co, o] += x[n, g·Cg + ci, o·s + k·d − p] · w[co, ci, k]`
/// for `ci, k` in order with the weight in a local and `o` innermost. Per output, the sum runs
/// in the same order as a single accumulator would; parallel over the batch.
pub fn forward(name: &str, conv: &Conv, t: &ConvTensors) -> Kernel {
    let dims = Dims::new(conv, t.x, t.y);
    let last = dims.last();
    let mut kb = KernelBuilder::new(format!("{name}.forward"));
    let n = kb.var(dims.batch);
    let g = kb.var(conv.groups);
    let co = kb.var(dims.out_per_group);
    let ci = kb.var(dims.in_per_group);
    let window = kb.vars(&conv.kernel);
    let out = kb.vars(&dims.out_spatial);
    let weight = kb.local();

    let out_channel = ix(g) * dims.out_per_group as i64 + ix(co);
    let in_channel = ix(g) * dims.in_per_group as i64 + ix(ci);
    let y_row = |o: Index| [vec![ix(n), out_channel.clone()], ixs(&out[..last]), vec![o]].concat();

    let start = match t.bias {
        Some(b) => b.load(std::slice::from_ref(&out_channel)),
        None => cst(0.0),
    };
    let init = kb.for_(
        g,
        vec![kb.for_(
            co,
            kb.nest(&out, vec![t.y.store(&y_row(ix(out[last])), start)]),
        )],
    );

    let mut rows = Vec::new();
    for segment in dims.segments(conv) {
        let (v, o) = segment.var(&mut kb);
        let position = dims.last_position(conv, o.clone(), ix(window[last]));
        let x_at = [
            vec![ix(n), in_channel.clone()],
            input_positions(conv, &dims, &out, &window, position.clone()),
        ]
        .concat();
        let y_at = y_row(o);
        let update =
            t.y.store(&y_at, fma(t.x.load(&x_at), local(weight), t.y.load(&y_at)));
        let body = match segment.guarded {
            true => kb.guarded(&[(position, dims.in_spatial[last])], vec![update]),
            false => vec![update],
        };
        rows.push(kb.for_(v, body));
    }
    let rows = kb.guarded(&outer_bounds(conv, &dims, &out, &window), rows);
    let w_at = [vec![out_channel.clone(), ix(ci)], ixs(&window)].concat();
    let per_weight = [
        vec![set(weight, t.weight.load(&w_at))],
        kb.nest(&out[..last], rows),
    ]
    .concat();
    let accumulate = kb.for_(
        g,
        vec![kb.for_(co, vec![kb.for_(ci, kb.nest(&window, per_weight))])],
    );
    let top = kb.parallel_for(n, vec![init, accumulate]);
    kb.finish(vec![top])
}

/// The gradient kernels: `dx` (if the input needs one), `dw`, and `db` (if there is a bias).
///
/// `dx` is accumulated (the plan zeroes it first), parallel over the batch: gathered along input
/// rows when every stride is 1 and there is padding, else scattered from output rows. `dw` and `db` reduce over the batch and the
/// output positions inside one iteration of the parallel output-channel loop, in a fixed order.
pub fn backward(
    name: &str,
    conv: &Conv,
    t: &ConvTensors,
    dy: &Tensor,
    dx: Option<&Tensor>,
    dweight: &Tensor,
    dbias: Option<&Tensor>,
) -> Vec<Kernel> {
    // The scatter's writes stay inside their image (the JIT proves the batch loop disjoint)
    // unless padding shifts them; its inner loop needs no guard without padding, while the
    // gather's edges (taps that miss the output) are as wide as the kernel.
    let unit_strides = conv.stride.iter().all(|&s| s == 1);
    let padded = conv.padding.iter().any(|&(before, _)| before > 0);
    let mut kernels: Vec<Kernel> = dx
        .map(|dx| match unit_strides && padded {
            true => backward_input_gather(name, conv, t, dy, dx),
            false => backward_input_scatter(name, conv, t, dy, dx),
        })
        .into_iter()
        .collect();
    kernels.push(backward_weight(name, conv, t, dy, dweight));
    kernels.extend(dbias.map(|db| backward_bias(name, dy, db)));
    kernels
}

/// `dx[n, g·Cg + ci, i] += dy[n, co, i + p − k·d] · w[co, ci, k]` for `co, ci, k` in order,
/// the weight in a local and the last input axis innermost, over the outputs in bounds: with
/// stride 1 the output an input element feeds is affine in it. Every write indexes `dx` by the
/// input position alone (padding guards only reads), which is what lets the JIT prove the
/// batch iterations disjoint and split them over threads; per element the sum runs over
/// `co, k` in order.
fn backward_input_gather(
    name: &str,
    conv: &Conv,
    t: &ConvTensors,
    dy: &Tensor,
    dx: &Tensor,
) -> Kernel {
    let dims = Dims::new(conv, t.x, t.y);
    let last = dims.last();
    let mut kb = KernelBuilder::new(format!("{name}.backward_input"));
    let n = kb.var(dims.batch);
    let g = kb.var(conv.groups);
    let co = kb.var(dims.out_per_group);
    let ci = kb.var(dims.in_per_group);
    let window = kb.vars(&conv.kernel);
    let input = kb.vars(&dims.in_spatial[..last]);
    let weight = kb.local();

    let out_channel = ix(g) * dims.out_per_group as i64 + ix(co);
    let in_channel = ix(g) * dims.in_per_group as i64 + ix(ci);
    // The output read by input `i` through tap `k` on axis `d`.
    let output = |d: usize, i: Index, k: Var| {
        i + dims.pad_before[d] as i64 - ix(k) * conv.dilation[d] as i64
    };
    let outer: Vec<Index> = (0..last)
        .map(|d| output(d, ix(input[d]), window[d]))
        .collect();
    let outer_bounds: Vec<(Index, usize)> = outer
        .iter()
        .cloned()
        .zip(dims.out_spatial.iter().copied())
        .collect();
    let mut rows = Vec::new();
    for segment in gather_segments(conv, &dims) {
        let (v, i) = segment.var(&mut kb);
        let o = output(last, i.clone(), window[last]);
        let dy_at = [
            vec![ix(n), out_channel.clone()],
            outer.clone(),
            vec![o.clone()],
        ]
        .concat();
        let dx_at = [vec![ix(n), in_channel.clone()], ixs(&input), vec![i]].concat();
        let update = dx.store(&dx_at, fma(dy.load(&dy_at), local(weight), dx.load(&dx_at)));
        let body = match segment.guarded {
            true => kb.guarded(&[(o, dims.out_spatial[last])], vec![update]),
            false => vec![update],
        };
        rows.push(kb.for_(v, body));
    }
    let rows = kb.guarded(&outer_bounds, rows);
    let w_at = [vec![out_channel, ix(ci)], ixs(&window)].concat();
    let per_weight = [
        vec![set(weight, t.weight.load(&w_at))],
        kb.nest(&input, rows),
    ]
    .concat();
    let body = kb.for_(
        g,
        vec![kb.for_(co, vec![kb.for_(ci, kb.nest(&window, per_weight))])],
    );
    let top = kb.parallel_for(n, vec![body]);
    kb.finish(vec![top])
}

/// The ranges of the last input axis for the stride-1 gather: guarded edges around an interior
/// where every tap `k` reads an output `i + p − k·d` inside `0..O`.
fn gather_segments(conv: &Conv, dims: &Dims) -> Vec<Segment> {
    let d = dims.last();
    let pad = dims.pad_before[d] as i64;
    let reach = (conv.kernel[d] as i64 - 1) * conv.dilation[d] as i64;
    let extent = dims.in_spatial[d] as i64;
    let lo = (reach - pad).clamp(0, extent);
    let hi = (dims.out_spatial[d] as i64 - pad).clamp(lo, extent);
    split(lo, hi, extent)
}

/// `0..lo` and `hi..extent` guarded, `lo..hi` not; empty ranges left out.
fn split(lo: i64, hi: i64, extent: i64) -> Vec<Segment> {
    [(0, lo, true), (lo, hi, false), (hi, extent, true)]
        .into_iter()
        .filter(|&(start, end, _)| end > start)
        .map(|(start, end, guarded)| Segment {
            start,
            len: (end - start) as usize,
            guarded,
        })
        .collect()
}

/// `dx[n, g·Cg + ci, o·s + k·d − p] += dy[n, co, o] · w[co, ci, k]` for `co, ci, k` in order,
/// the weight in a local and `o` innermost (distinct `o` write distinct `dx`: no chain); any
/// stride.
fn backward_input_scatter(
    name: &str,
    conv: &Conv,
    t: &ConvTensors,
    dy: &Tensor,
    dx: &Tensor,
) -> Kernel {
    let dims = Dims::new(conv, t.x, t.y);
    let last = dims.last();
    let mut kb = KernelBuilder::new(format!("{name}.backward_input"));
    let n = kb.var(dims.batch);
    let g = kb.var(conv.groups);
    let co = kb.var(dims.out_per_group);
    let ci = kb.var(dims.in_per_group);
    let window = kb.vars(&conv.kernel);
    let out = kb.vars(&dims.out_spatial[..last]);
    let weight = kb.local();

    let out_channel = ix(g) * dims.out_per_group as i64 + ix(co);
    let in_channel = ix(g) * dims.in_per_group as i64 + ix(ci);
    let mut rows = Vec::new();
    for segment in dims.segments(conv) {
        let (v, o) = segment.var(&mut kb);
        let position = dims.last_position(conv, o.clone(), ix(window[last]));
        let dy_at = [vec![ix(n), out_channel.clone()], ixs(&out), vec![o]].concat();
        let dx_at = [
            vec![ix(n), in_channel.clone()],
            input_positions(conv, &dims, &out, &window, position.clone()),
        ]
        .concat();
        let update = dx.store(&dx_at, fma(dy.load(&dy_at), local(weight), dx.load(&dx_at)));
        let body = match segment.guarded {
            true => kb.guarded(&[(position, dims.in_spatial[last])], vec![update]),
            false => vec![update],
        };
        rows.push(kb.for_(v, body));
    }
    let rows = kb.guarded(&outer_bounds(conv, &dims, &out, &window), rows);
    let w_at = [vec![out_channel, ix(ci)], ixs(&window)].concat();
    let per_weight = [vec![set(weight, t.weight.load(&w_at))], kb.nest(&out, rows)].concat();
    let body = kb.for_(
        g,
        vec![kb.for_(co, vec![kb.for_(ci, kb.nest(&window, per_weight))])],
    );
    let top = kb.parallel_for(n, vec![body]);
    kb.finish(vec![top])
}

/// `dw[co, ci, k] = Σ_{n, o} dy[n, co, o] · x[n, g·Cg + ci, o·s + k·d − p]`. The top-level loop
/// runs over all output channels; the group of `co` is found by a guard over the group loop,
/// since the loop IR has no integer division. The offsets of the last window axis are unrolled
/// into independent accumulators (up to [`MAX_ACCUMULATORS`] at once) that share each `dy` load;
/// each sums over `n, o` in order, so the result does not depend on the unrolling.
fn backward_weight(name: &str, conv: &Conv, t: &ConvTensors, dy: &Tensor, dw: &Tensor) -> Kernel {
    let dims = Dims::new(conv, t.x, t.y);
    let last = dims.last();
    let mut kb = KernelBuilder::new(format!("{name}.backward_weight"));
    let co = kb.var(conv.out_channels);
    let g = kb.var(conv.groups);
    let ci = kb.var(dims.in_per_group);
    let window = kb.vars(&conv.kernel[..last]);
    let accs: Vec<Local> = (0..conv.kernel[last].min(MAX_ACCUMULATORS))
        .map(|_| kb.local())
        .collect();
    let gradient = kb.local();

    let in_channel = ix(g) * dims.in_per_group as i64 + ix(ci);
    let offsets: Vec<i64> = (0..conv.kernel[last] as i64).collect();
    let mut per_weights = Vec::new();
    for chunk in offsets.chunks(MAX_ACCUMULATORS) {
        let n = kb.var(dims.batch);
        let out = kb.vars(&dims.out_spatial[..last]);
        let mut rows = Vec::new();
        for segment in dims.segments(conv) {
            let (v, o) = segment.var(&mut kb);
            let dy_at = [vec![ix(n), ix(co)], ixs(&out), vec![o.clone()]].concat();
            let mut body = vec![set(gradient, dy.load(&dy_at))];
            for (&acc, &k) in accs.iter().zip(chunk) {
                let position = dims.last_position(conv, o.clone(), Index::default() + k);
                let x_at = [
                    vec![ix(n), in_channel.clone()],
                    input_positions(conv, &dims, &out, &window, position.clone()),
                ]
                .concat();
                let update = set(acc, fma(local(gradient), t.x.load(&x_at), local(acc)));
                body.extend(match segment.guarded {
                    true => kb.guarded(&[(position, dims.in_spatial[last])], vec![update]),
                    false => vec![update],
                });
            }
            rows.push(kb.for_(v, body));
        }
        let rows = kb.guarded(&outer_bounds(conv, &dims, &out, &window), rows);
        per_weights.extend(accs.iter().map(|&acc| set(acc, cst(0.0))));
        per_weights.push(kb.for_(n, kb.nest(&out, rows)));
        for (&acc, &k) in accs.iter().zip(chunk) {
            let dw_at = [
                vec![ix(co), ix(ci)],
                ixs(&window),
                vec![Index::default() + k],
            ]
            .concat();
            per_weights.push(dw.store(&dw_at, local(acc)));
        }
    }
    let in_group = ix(co) - ix(g) * dims.out_per_group as i64;
    let group_body = vec![kb.for_(ci, kb.nest(&window, per_weights))];
    let body = kb.for_(g, kb.guarded(&[(in_group, dims.out_per_group)], group_body));
    let top = kb.parallel_for(co, vec![body]);
    kb.finish(vec![top])
}

/// `db[co] = Σ_{n, o} dy[n, co, o]`, parallel over output channels.
fn backward_bias(name: &str, dy: &Tensor, db: &Tensor) -> Kernel {
    let dy = dy.channels_view();
    let mut kb = KernelBuilder::new(format!("{name}.backward_bias"));
    let co = kb.var(dy.dims[1]);
    let n = kb.var(dy.dims[0]);
    let positions = kb.var(dy.dims[2]);
    let acc = kb.local();
    let add = set(acc, local(acc) + dy.load(&[ix(n), ix(co), ix(positions)]));
    let body: Vec<Stmt> = vec![
        set(acc, cst(0.0)),
        kb.for_(n, vec![kb.for_(positions, vec![add])]),
        db.store(&[ix(co)], local(acc)),
    ];
    let top = kb.parallel_for(co, body);
    kb.finish(vec![top])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::ParamId;
    use crate::lower::interp::run;
    use crate::lower::loops::BufId;

    fn conv2d(cin: usize, cout: usize, k: usize, pad: usize, stride: usize, groups: usize) -> Conv {
        Conv {
            in_channels: cin,
            out_channels: cout,
            kernel: vec![k, k],
            stride: vec![stride, stride],
            padding: vec![(pad, pad), (pad, pad)],
            dilation: vec![1, 1],
            groups,
            weight: ParamId(0),
            bias: None,
        }
    }

    /// Buffers 0..=2: x, w, y (seed example sizes: one image, 3×3 input, 2×2 kernel).
    fn seed(cin: usize) -> (Conv, Tensor, Tensor, Tensor) {
        (
            conv2d(cin, 1, 2, 0, 1, 1),
            Tensor::new(BufId(0), vec![1, cin, 3, 3]),
            Tensor::new(BufId(1), vec![1, cin, 2, 2]),
            Tensor::new(BufId(2), vec![1, 1, 2, 2]),
        )
    }

    const X: [f32; 9] = [0., 1., 2., 3., 4., 5., 6., 7., 8.];
    const K: [f32; 4] = [0., 1., 2., 3.];

    #[test]
    fn seed_cross_correlation() {
        let (conv, x, w, y) = seed(1);
        let t = ConvTensors {
            x: &x,
            weight: &w,
            bias: None,
            y: &y,
        };
        let mut bufs = vec![X.to_vec(), K.to_vec(), vec![0.; 4]];
        run(&forward("conv", &conv, &t), &mut bufs).unwrap();
        assert_eq!(bufs[2], vec![19., 25., 37., 43.]); // exact: small integers
    }

    #[test]
    fn seed_two_input_channels() {
        let (conv, x, w, y) = seed(2);
        let t = ConvTensors {
            x: &x,
            weight: &w,
            bias: None,
            y: &y,
        };
        let xs = [X.to_vec(), X.iter().map(|v| v + 1.).collect()].concat();
        let ks = [K.to_vec(), K.iter().map(|v| v + 1.).collect()].concat();
        let mut bufs = vec![xs, ks, vec![0.; 4]];
        run(&forward("conv", &conv, &t), &mut bufs).unwrap();
        assert_eq!(bufs[2], vec![56., 72., 104., 120.]);
    }

    /// Padding 1 with a 3×3 kernel of ones on a 2×2 input: every output sums the whole input,
    /// plus the bias; the gradients are hand-computed for dy = 1.
    #[test]
    fn padded_forward_and_backward_with_bias() {
        let mut conv = conv2d(1, 1, 3, 1, 1, 1);
        conv.bias = Some(ParamId(1));
        let x = Tensor::new(BufId(0), vec![1, 1, 2, 2]);
        let w = Tensor::new(BufId(1), vec![1, 1, 3, 3]);
        let b = Tensor::new(BufId(2), vec![1]);
        let y = Tensor::new(BufId(3), vec![1, 1, 2, 2]);
        let (dy, dx, dw, db) = (
            Tensor::new(BufId(4), vec![1, 1, 2, 2]),
            Tensor::new(BufId(5), vec![1, 1, 2, 2]),
            Tensor::new(BufId(6), vec![1, 1, 3, 3]),
            Tensor::new(BufId(7), vec![1]),
        );
        let t = ConvTensors {
            x: &x,
            weight: &w,
            bias: Some(&b),
            y: &y,
        };
        let mut bufs = vec![
            vec![1., 2., 3., 4.],
            vec![1.; 9],
            vec![0.5],
            vec![0.; 4],
            vec![1.; 4],
            vec![0.; 4],
            vec![0.; 9],
            vec![0.; 1],
        ];
        run(&forward("c", &conv, &t), &mut bufs).unwrap();
        assert_eq!(bufs[3], vec![10.5; 4]);
        for k in backward("c", &conv, &t, &dy, Some(&dx), &dw, Some(&db)) {
            run(&k, &mut bufs).unwrap();
        }
        // Each input feeds all four outputs through a ones kernel.
        assert_eq!(bufs[5], vec![4.; 4]);
        // dw[i, j] = Σ_o x[o + (i, j) − 1]: corner (0, 0) sees only x[0, 0], the centre all.
        assert_eq!(bufs[6], vec![1., 3., 2., 4., 10., 6., 3., 7., 4.]);
        assert_eq!(bufs[7], vec![4.]);
    }

    /// Two groups, one channel each: output channel g sees only input channel g.
    #[test]
    fn groups_keep_channels_apart() {
        let conv = conv2d(2, 2, 1, 0, 1, 2);
        let x = Tensor::new(BufId(0), vec![1, 2, 1, 2]);
        let w = Tensor::new(BufId(1), vec![2, 1, 1, 1]);
        let y = Tensor::new(BufId(2), vec![1, 2, 1, 2]);
        let dy = Tensor::new(BufId(3), vec![1, 2, 1, 2]);
        let dw = Tensor::new(BufId(4), vec![2, 1, 1, 1]);
        let t = ConvTensors {
            x: &x,
            weight: &w,
            bias: None,
            y: &y,
        };
        let mut bufs = vec![
            vec![1., 2., 3., 4.],
            vec![10., 100.],
            vec![0.; 4],
            vec![1., 0., 0., 1.],
            vec![0.; 2],
        ];
        run(&forward("c", &conv, &t), &mut bufs).unwrap();
        assert_eq!(bufs[2], vec![10., 20., 300., 400.]);
        for k in backward("c", &conv, &t, &dy, None, &dw, None) {
            run(&k, &mut bufs).unwrap();
        }
        assert_eq!(bufs[4], vec![1., 4.]);
    }
}
