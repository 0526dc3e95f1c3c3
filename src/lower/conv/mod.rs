//! Convolution (`nn.ConvNd`, cross-correlation) over any number of spatial axes: the loops are
//! generated from the rank, so 1-D, 2-D and 3-D share one lowering.
//!
//! Layouts: `x [N, C_in, *S]`, `w [C_out, C_in/G, *K]`, `y [N, C_out, *O]`. Output channel `co`
//! of group `g` reads input channels `g·C_in/G ..`.
//!
//! Every product is a contraction nest (`loops`, "Contraction nests"), reading zero-padded
//! copies so that no guard sits in a sum (`copy.rs`). The lanes go where the output and the
//! operand that changes with them are contiguous, the other operand being broadcast:
//! - forward: over output channels (weights packed `[g, ci, *k, co]`, rows over the last output
//!   axis) when a group has at least [`MIN_CHANNEL_LANES`] of them, else over the last output
//!   axis (rows over output channels, weights broadcast) — LeNet's 1→6 channels;
//! - input gradient: over input channels by the same rule, else over the flattened positions of
//!   `dy`, one tap at a time (`gradient.rs`);
//! - weight gradient: over output channels of `dy` transposed channels-last.
//!
//! Summation order, per output element, fixed whatever the blocking and the thread count: the
//! bias (or 0) then `ci, *k` in increasing order (forward), the accumulated `dx` then `co, *k`
//! (input gradient over channels; over positions: 0, then per `k` in order its `co` in order,
//! then added to `dx`), `n, *o` (weight and bias gradients). Reductions are nested in that order,
//! outermost first, which is the order of the old single-accumulator loops.

mod copy;
mod gradient;

use super::activation;
use super::builder::{cst, ix, ixs, Contraction, KernelBuilder, Scratch, ScratchSpec, Tensor};
use super::loops::{Index, Kernel, Var};
use crate::ir::{Activation, Conv};

/// The tensors of one convolution. `x` and `y` carry the batch axis.
pub struct ConvTensors<'a> {
    pub x: &'a Tensor,
    pub weight: &'a Tensor,
    pub bias: Option<&'a Tensor>,
    pub y: &'a Tensor,
    /// The buffers [`scratch`] asked for.
    pub scratch: &'a Scratch,
}

/// Channels per group from which the lanes run over channels: 8 fill two `f32x4` vectors;
/// fewer (LeNet's 6) would waste lanes, so the lanes run along the image's last axis instead.
const MIN_CHANNEL_LANES: usize = 8;

/// Per-axis sizes every kernel needs, read from the IR and the tensors.
struct Dims {
    batch: usize,
    in_spatial: Vec<usize>,
    out_spatial: Vec<usize>,
    in_per_group: usize,
    out_per_group: usize,
    pad_before: Vec<usize>,
    /// The input's spatial sizes with both paddings.
    padded_spatial: Vec<usize>,
}

impl Dims {
    fn new(conv: &Conv, x: &[usize], y: &[usize]) -> Dims {
        Dims {
            batch: x[0],
            in_spatial: x[2..].to_vec(),
            out_spatial: y[2..].to_vec(),
            in_per_group: conv.in_channels / conv.groups,
            out_per_group: conv.out_channels / conv.groups,
            pad_before: conv.padding.iter().map(|&(before, _)| before).collect(),
            padded_spatial: x[2..]
                .iter()
                .zip(&conv.padding)
                .map(|(&s, &(before, after))| s + before + after)
                .collect(),
        }
    }

    fn last(&self) -> usize {
        self.out_spatial.len() - 1
    }

    fn padded(&self) -> bool {
        self.padded_spatial != self.in_spatial
    }
}

/// The input position `o·s + k·d` of each spatial axis, in the padded input.
fn window_positions(conv: &Conv, out: &[Index], window: &[Var]) -> Vec<Index> {
    out.iter()
        .zip(window)
        .enumerate()
        .map(|(d, (o, &k))| o.clone() * conv.stride[d] as i64 + ix(k) * conv.dilation[d] as i64)
        .collect()
}

/// Whether the stride-1 input gradient applies (a correlation of the padded `dy`).
fn unit_strides(conv: &Conv) -> bool {
    conv.stride.iter().all(|&s| s == 1)
}

/// The scratch buffers of a convolution with input `x` and output `y`: `padded_input` (with
/// padding), `packed_weight` (lanes over output channels); with a gradient, `dy_t`
/// (`[N, *O, C_out]`, the gradient before a fused activation); with an input gradient and lanes
/// over input channels, `padded_dy` and `packed_weight_t`; else with unit strides `dy_rows` and
/// `padded_dx` (with a spare slab, `gradient.rs`), and with padding and a stride `padded_dx`.
pub fn scratch(
    conv: &Conv,
    x: &Tensor,
    y: &Tensor,
    has_gradient: bool,
    has_input_gradient: bool,
) -> Vec<ScratchSpec> {
    let dims = Dims::new(conv, &x.dims, &y.dims);
    let spec = |name, dims: Vec<usize>| ScratchSpec { name, dims };
    let padded_x = [
        vec![dims.batch, conv.in_channels],
        dims.padded_spatial.clone(),
    ]
    .concat();
    let mut specs = Vec::new();
    if dims.padded() {
        specs.push(spec("padded_input", padded_x.clone()));
    }
    if dims.out_per_group >= MIN_CHANNEL_LANES {
        let packed = [vec![conv.groups, dims.in_per_group], conv.kernel.clone()].concat();
        specs.push(spec(
            "packed_weight",
            [packed, vec![dims.out_per_group]].concat(),
        ));
    }
    if has_gradient && gradient::weight_position_lanes(conv, &dims) {
        let last = dims.out_spatial[dims.last()];
        specs.push(spec("dy_pre", y.dims.clone()));
        let dw = [
            vec![conv.out_channels, dims.in_per_group],
            conv.kernel.clone(),
        ]
        .concat();
        specs.push(spec("dw_lanes", [dw, vec![last]].concat()));
        specs.push(spec("db_lanes", vec![conv.out_channels, last]));
    } else if has_gradient {
        let dy_t = [vec![dims.batch], dims.out_spatial.clone()].concat();
        specs.push(spec("dy_t", [dy_t, vec![conv.out_channels]].concat()));
    }
    if has_gradient && has_input_gradient {
        if gradient::input_channel_lanes(&dims) {
            specs.push(spec("padded_dy", gradient::padded_dy_dims(conv, &dims)));
            let packed = [vec![conv.groups, dims.out_per_group], conv.kernel.clone()].concat();
            specs.push(spec(
                "packed_weight_t",
                [packed, vec![dims.in_per_group]].concat(),
            ));
        } else if unit_strides(conv) {
            specs.push(spec("dy_rows", gradient::dy_rows_dims(conv, &dims)));
            specs.push(spec("padded_dx", gradient::wide_dx_dims(conv, &dims)));
        } else if dims.padded() {
            specs.push(spec("padded_dx", padded_x));
        }
    }
    specs
}

/// The padded input (a copy into scratch, or `x` itself without padding), after the kernel that
/// fills it (named `<name>.<kernel>`) if any.
fn padded_input(
    name: &str,
    kernel: &str,
    t: &ConvTensors,
    dims: &Dims,
) -> (Option<Kernel>, Tensor) {
    if !dims.padded() {
        return (None, t.x.clone());
    }
    let padded = t.scratch.get("padded_input");
    let shift: Vec<i64> = dims.pad_before.iter().map(|&p| p as i64).collect();
    let fill = copy::shifted_copy(format!("{name}.{kernel}"), t.x, padded, &shift, &|at| {
        t.x.load(at)
    });
    (Some(fill), padded.clone())
}

/// `y[n, co, o] = act(b[co] + Σ_{ci, k} xpad[n, g·Cg + ci, o·s + k·d] · w[co, ci, k])`, parallel
/// over the batch, lanes as the module doc says; preceded by the padding copy and the weight
/// packing when they apply.
pub fn forward(
    name: &str,
    conv: &Conv,
    t: &ConvTensors,
    epilogue: Option<Activation>,
) -> Vec<Kernel> {
    let dims = Dims::new(conv, &t.x.dims, &t.y.dims);
    let (fill, source) = padded_input(name, "pad_input", t, &dims);
    let mut kernels: Vec<Kernel> = fill.into_iter().collect();
    let channel_lanes = dims.out_per_group >= MIN_CHANNEL_LANES;
    if channel_lanes {
        let packed = t.scratch.get("packed_weight");
        kernels.push(copy::pack_weight(
            format!("{name}.pack_weight"),
            t.weight,
            packed,
            false,
        ));
    }
    let last = dims.last();
    let mut kb = KernelBuilder::new(format!("{name}.forward"));
    let n = kb.var(dims.batch);
    let g = kb.var(conv.groups);
    let outer = kb.vars(&dims.out_spatial[..last]);
    let (rows, lanes) = match channel_lanes {
        true => (kb.var(dims.out_spatial[last]), kb.var(dims.out_per_group)),
        false => (kb.var(dims.out_per_group), kb.var(dims.out_spatial[last])),
    };
    let (co, o_last) = match channel_lanes {
        true => (lanes, rows),
        false => (rows, lanes),
    };
    let ci = kb.var(dims.in_per_group);
    let window = kb.vars(&conv.kernel);
    let out_channel = ix(g) * dims.out_per_group as i64 + ix(co);
    let in_channel = ix(g) * dims.in_per_group as i64 + ix(ci);
    let out_at = [ixs(&outer), vec![ix(o_last)]].concat();
    let x_at = [
        vec![ix(n), in_channel],
        window_positions(conv, &out_at, &window),
    ]
    .concat();
    let w = match channel_lanes {
        true => t
            .scratch
            .get("packed_weight")
            .load(&[vec![ix(g), ix(ci)], ixs(&window), vec![ix(co)]].concat()),
        false => t
            .weight
            .load(&[vec![out_channel.clone(), ix(ci)], ixs(&window)].concat()),
    };
    let nest = Contraction {
        rows: Some((rows, false)),
        lanes,
        reductions: [vec![ci], window].concat(),
        init: t
            .bias
            .map_or(cst(0.0), |b| b.load(std::slice::from_ref(&out_channel))),
        a: source.load(&x_at),
        b: w,
        out: t.y.clone(),
        at: [vec![ix(n), out_channel], out_at].concat(),
    };
    let nest = kb.contraction(nest, |acc| activation::fused(epilogue, acc));
    let top = kb.parallel_for(n, vec![kb.for_(g, kb.nest(&outer, vec![nest]))]);
    kernels.push(kb.finish(vec![top]));
    kernels
}

/// The gradient kernels, in order: `dy` transposed (through the fused activation's derivative
/// when `epilogue` is set: `dy` is then the gradient of the activated output), `dx` (if the
/// input needs one), `dw` and `db` (if there is a bias). See `gradient.rs`.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    name: &str,
    conv: &Conv,
    t: &ConvTensors,
    dy: &Tensor,
    dx: Option<&Tensor>,
    dweight: &Tensor,
    dbias: Option<&Tensor>,
    epilogue: Option<Activation>,
) -> Vec<Kernel> {
    let dims = Dims::new(conv, &t.x.dims, &t.y.dims);
    let gradient = gradient::Gradient {
        conv,
        t,
        dims: &dims,
        dy,
        epilogue,
    };
    let mut kernels = vec![match gradient::weight_position_lanes(conv, &dims) {
        true => copy::shifted_copy(
            format!("{name}.activation_grad"),
            dy,
            t.scratch.get("dy_pre"),
            &vec![0; dims.out_spatial.len()],
            &|at| gradient.pre_activation(at),
        ),
        false => copy::transpose(
            format!("{name}.transpose_dy"),
            dy,
            t.scratch.get("dy_t"),
            &|at| gradient.pre_activation(at),
        ),
    }];
    if let Some(dx) = dx {
        kernels.extend(gradient.input(name, dx));
    }
    // The forward's padded copy is filled again rather than kept alive through the step: `x`
    // is live until here anyway, so keeping both would hold the input twice (the memory plan
    // shares the scratch meanwhile), for a copy that costs ~0.5% of LeNet's step.
    let (fill, source) = padded_input(name, "backward_pad_input", t, &dims);
    kernels.extend(fill);
    kernels.extend(gradient.weight_and_bias(name, &source, dweight, dbias));
    kernels
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::ParamId;
    use crate::lower::interp::run;
    use crate::lower::loops::BufId;

    /// Zeroed scratch buffers for `conv`, appended to `bufs`.
    fn scratch_for(conv: &Conv, x: &Tensor, y: &Tensor, bufs: &mut Vec<Vec<f32>>) -> Scratch {
        let specs = scratch(conv, x, y, true, true);
        let first = bufs.len() as u32;
        bufs.extend(specs.iter().map(|s| vec![0.0; s.dims.iter().product()]));
        Scratch::numbered(first, &specs)
    }

    fn run_all(kernels: &[Kernel], bufs: &mut [Vec<f32>]) {
        for k in kernels {
            run(k, bufs).unwrap();
        }
    }

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
        let mut bufs = vec![X.to_vec(), K.to_vec(), vec![0.; 4]];
        let scratch = scratch_for(&conv, &x, &y, &mut bufs);
        let t = ConvTensors {
            x: &x,
            weight: &w,
            bias: None,
            y: &y,
            scratch: &scratch,
        };
        run_all(&forward("conv", &conv, &t, None), &mut bufs);
        assert_eq!(bufs[2], vec![19., 25., 37., 43.]); // exact: small integers
    }

    #[test]
    fn seed_two_input_channels() {
        let (conv, x, w, y) = seed(2);
        let xs = [X.to_vec(), X.iter().map(|v| v + 1.).collect()].concat();
        let ks = [K.to_vec(), K.iter().map(|v| v + 1.).collect()].concat();
        let mut bufs = vec![xs, ks, vec![0.; 4]];
        let scratch = scratch_for(&conv, &x, &y, &mut bufs);
        let t = ConvTensors {
            x: &x,
            weight: &w,
            bias: None,
            y: &y,
            scratch: &scratch,
        };
        run_all(&forward("conv", &conv, &t, None), &mut bufs);
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
        let scratch = scratch_for(&conv, &x, &y, &mut bufs);
        let t = ConvTensors {
            x: &x,
            weight: &w,
            bias: Some(&b),
            y: &y,
            scratch: &scratch,
        };
        run_all(&forward("c", &conv, &t, None), &mut bufs);
        assert_eq!(bufs[3], vec![10.5; 4]);
        run_all(
            &backward("c", &conv, &t, &dy, Some(&dx), &dw, Some(&db), None),
            &mut bufs,
        );
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
        let mut bufs = vec![
            vec![1., 2., 3., 4.],
            vec![10., 100.],
            vec![0.; 4],
            vec![1., 0., 0., 1.],
            vec![0.; 2],
        ];
        let scratch = scratch_for(&conv, &x, &y, &mut bufs);
        let t = ConvTensors {
            x: &x,
            weight: &w,
            bias: None,
            y: &y,
            scratch: &scratch,
        };
        run_all(&forward("c", &conv, &t, None), &mut bufs);
        assert_eq!(bufs[2], vec![10., 20., 300., 400.]);
        run_all(
            &backward("c", &conv, &t, &dy, None, &dw, None, None),
            &mut bufs,
        );
        assert_eq!(bufs[4], vec![1., 4.]);
    }
}
