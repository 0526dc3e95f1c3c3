//! Convolution (`nn.ConvNd`, cross-correlation) over any number of spatial axes: the loops are
//! generated from the rank, so 1-D, 2-D and 3-D share one lowering.
//!
//! Layouts: `x [N, C_in, *S]`, `w [C_out, C_in/G, *K]`, `y [N, C_out, *O]`. Output channel `co`
//! of group `g` reads input channels `g·C_in/G ..`. Padding is an `InBounds` guard around the
//! multiply-add (zero padding contributes nothing), left out on axes that never leave the input.

use super::builder::{cst, fma, ix, ixs, local, set, window_positions, KernelBuilder, Tensor};
use super::loops::{Index, Kernel, Stmt, Var};
use crate::ir::Conv;

/// The tensors of one convolution. `x` and `y` carry the batch axis.
pub struct ConvTensors<'a> {
    pub x: &'a Tensor,
    pub weight: &'a Tensor,
    pub bias: Option<&'a Tensor>,
    pub y: &'a Tensor,
}

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

    /// `(position, size)` guards of every spatial axis.
    fn bounds(&self, conv: &Conv, out: &[Var], window: &[Var]) -> Vec<(Index, usize)> {
        window_positions(out, window, &conv.stride, &conv.dilation, &self.pad_before)
            .into_iter()
            .zip(self.in_spatial.iter().copied())
            .collect()
    }
}

/// `y[n, co, o] = b[co] + Σ_{ci, k} x[n, g·Cg + ci, o·s + k·d − p] · w[co, ci, k]`, one local
/// accumulator per output element; parallel over the batch.
pub fn forward(name: &str, conv: &Conv, t: &ConvTensors) -> Kernel {
    let dims = Dims::new(conv, t.x, t.y);
    let mut kb = KernelBuilder::new(format!("{name}.forward"));
    let n = kb.var(dims.batch);
    let g = kb.var(conv.groups);
    let co = kb.var(dims.out_per_group);
    let out = kb.vars(&dims.out_spatial);
    let ci = kb.var(dims.in_per_group);
    let window = kb.vars(&conv.kernel);
    let acc = kb.local();

    let out_channel = ix(g) * dims.out_per_group as i64 + ix(co);
    let in_channel = ix(g) * dims.in_per_group as i64 + ix(ci);
    let positions = window_positions(
        &out,
        &window,
        &conv.stride,
        &conv.dilation,
        &dims.pad_before,
    );
    let x_at = [vec![ix(n), in_channel], positions].concat();
    let w_at = [vec![out_channel.clone(), ix(ci)], ixs(&window)].concat();
    let multiply_add = set(acc, fma(t.x.load(&x_at), t.weight.load(&w_at), local(acc)));
    let inner = kb.guarded(&dims.bounds(conv, &out, &window), vec![multiply_add]);

    let start = match t.bias {
        Some(b) => b.load(std::slice::from_ref(&out_channel)),
        None => cst(0.0),
    };
    let y_at = [vec![ix(n), out_channel], ixs(&out)].concat();
    let per_output = vec![
        set(acc, start),
        kb.for_(ci, kb.nest(&window, inner)),
        t.y.store(&y_at, local(acc)),
    ];
    let body = kb.for_(g, vec![kb.for_(co, kb.nest(&out, per_output))]);
    let top = kb.parallel_for(n, vec![body]);
    kb.finish(vec![top])
}

/// The gradient kernels: `dx` (if the input needs one), `dw`, and `db` (if there is a bias).
///
/// `dx` is accumulated (the plan zeroes it first), parallel over the batch: gathered per input
/// element when every stride is 1, else scattered from each output. `dw` and `db` reduce over
/// the batch and the output positions inside one iteration of the parallel output-channel
/// loop, in a fixed order.
pub fn backward(
    name: &str,
    conv: &Conv,
    t: &ConvTensors,
    dy: &Tensor,
    dx: Option<&Tensor>,
    dweight: &Tensor,
    dbias: Option<&Tensor>,
) -> Vec<Kernel> {
    let unit_strides = conv.stride.iter().all(|&s| s == 1);
    let mut kernels: Vec<Kernel> = dx
        .map(|dx| {
            if unit_strides {
                backward_input_gather(name, conv, t, dy, dx)
            } else {
                backward_input_scatter(name, conv, t, dy, dx)
            }
        })
        .into_iter()
        .collect();
    kernels.push(backward_weight(name, conv, t, dy, dweight));
    kernels.extend(dbias.map(|db| backward_bias(name, dy, db)));
    kernels
}

/// `dx[n, g·Cg + ci, i] += Σ_{co, k} dy[n, co, i + p − k·d] · w[co, ci, k]` over the outputs
/// in bounds: with stride 1 the output an input element feeds is affine in it. Each element is
/// written once, from a local sum, and padding guards only reads, which is what lets the JIT
/// prove the batch iterations disjoint and split them over threads.
fn backward_input_gather(
    name: &str,
    conv: &Conv,
    t: &ConvTensors,
    dy: &Tensor,
    dx: &Tensor,
) -> Kernel {
    let dims = Dims::new(conv, t.x, t.y);
    let mut kb = KernelBuilder::new(format!("{name}.backward_input"));
    let n = kb.var(dims.batch);
    let g = kb.var(conv.groups);
    let ci = kb.var(dims.in_per_group);
    let input = kb.vars(&dims.in_spatial);
    let co = kb.var(dims.out_per_group);
    let window = kb.vars(&conv.kernel);
    let acc = kb.local();

    let out_channel = ix(g) * dims.out_per_group as i64 + ix(co);
    let in_channel = ix(g) * dims.in_per_group as i64 + ix(ci);
    let outputs: Vec<Index> = (0..input.len())
        .map(|d| ix(input[d]) + dims.pad_before[d] as i64 - ix(window[d]) * conv.dilation[d] as i64)
        .collect();
    let bounds: Vec<(Index, usize)> = outputs
        .iter()
        .cloned()
        .zip(dims.out_spatial.iter().copied())
        .collect();
    let dy_at = [vec![ix(n), out_channel.clone()], outputs].concat();
    let w_at = [vec![out_channel, ix(ci)], ixs(&window)].concat();
    let multiply_add = set(acc, fma(dy.load(&dy_at), t.weight.load(&w_at), local(acc)));
    let inner = kb.guarded(&bounds, vec![multiply_add]);

    let dx_at = [vec![ix(n), in_channel], ixs(&input)].concat();
    let per_input = vec![
        set(acc, cst(0.0)),
        kb.for_(co, kb.nest(&window, inner)),
        dx.accumulate(&dx_at, local(acc)),
    ];
    let body = kb.for_(g, vec![kb.for_(ci, kb.nest(&input, per_input))]);
    let top = kb.parallel_for(n, vec![body]);
    kb.finish(vec![top])
}

/// `dx[n, g·Cg + ci, o·s + k·d − p] += dy[n, co, o] · w[co, ci, k]` for every output and tap
/// in bounds (any stride).
fn backward_input_scatter(
    name: &str,
    conv: &Conv,
    t: &ConvTensors,
    dy: &Tensor,
    dx: &Tensor,
) -> Kernel {
    let dims = Dims::new(conv, t.x, t.y);
    let mut kb = KernelBuilder::new(format!("{name}.backward_input"));
    let n = kb.var(dims.batch);
    let g = kb.var(conv.groups);
    let co = kb.var(dims.out_per_group);
    let out = kb.vars(&dims.out_spatial);
    let ci = kb.var(dims.in_per_group);
    let window = kb.vars(&conv.kernel);

    let out_channel = ix(g) * dims.out_per_group as i64 + ix(co);
    let in_channel = ix(g) * dims.in_per_group as i64 + ix(ci);
    let positions = window_positions(
        &out,
        &window,
        &conv.stride,
        &conv.dilation,
        &dims.pad_before,
    );
    let dy_at = [vec![ix(n), out_channel.clone()], ixs(&out)].concat();
    let w_at = [vec![out_channel, ix(ci)], ixs(&window)].concat();
    let dx_at = [vec![ix(n), in_channel], positions].concat();
    let scatter = dx.accumulate(&dx_at, dy.load(&dy_at) * t.weight.load(&w_at));
    let inner = kb.guarded(&dims.bounds(conv, &out, &window), vec![scatter]);

    let per_output = vec![kb.for_(ci, kb.nest(&window, inner))];
    let body = kb.for_(g, vec![kb.for_(co, kb.nest(&out, per_output))]);
    let top = kb.parallel_for(n, vec![body]);
    kb.finish(vec![top])
}

/// `dw[co, ci, k] = Σ_{n, o} dy[n, co, o] · x[n, g·Cg + ci, o·s + k·d − p]`. The top-level loop
/// runs over all output channels; the group of `co` is found by a guard over the group loop,
/// since the loop IR has no integer division.
fn backward_weight(name: &str, conv: &Conv, t: &ConvTensors, dy: &Tensor, dw: &Tensor) -> Kernel {
    let dims = Dims::new(conv, t.x, t.y);
    let mut kb = KernelBuilder::new(format!("{name}.backward_weight"));
    let co = kb.var(conv.out_channels);
    let g = kb.var(conv.groups);
    let ci = kb.var(dims.in_per_group);
    let window = kb.vars(&conv.kernel);
    let n = kb.var(dims.batch);
    let out = kb.vars(&dims.out_spatial);
    let acc = kb.local();

    let in_channel = ix(g) * dims.in_per_group as i64 + ix(ci);
    let positions = window_positions(
        &out,
        &window,
        &conv.stride,
        &conv.dilation,
        &dims.pad_before,
    );
    let dy_at = [vec![ix(n), ix(co)], ixs(&out)].concat();
    let x_at = [vec![ix(n), in_channel], positions].concat();
    let multiply_add = set(acc, fma(dy.load(&dy_at), t.x.load(&x_at), local(acc)));
    let inner = kb.guarded(&dims.bounds(conv, &out, &window), vec![multiply_add]);

    let dw_at = [vec![ix(co), ix(ci)], ixs(&window)].concat();
    let per_weight = vec![
        set(acc, cst(0.0)),
        kb.for_(n, kb.nest(&out, inner)),
        dw.store(&dw_at, local(acc)),
    ];
    let in_group = ix(co) - ix(g) * dims.out_per_group as i64;
    let group_body = vec![kb.for_(ci, kb.nest(&window, per_weight))];
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
