//! The gradients of a convolution, each a contraction nest except the strided input gradient.
//!
//! - `dx`, unit strides: a correlation of the zero-padded `dy` with the flipped weights,
//!   `dx[n, g·Cg + ci, i] += Σ_{co, k} dypad[n, co, i + (K − 1 − k)·d] · w[co, ci, k]`, with
//!   `dypad[q] = dy[q − (K − 1)·d + p]` (0 outside `dy`). The flip is in the index, so `k` still
//!   runs in increasing order. Lanes over input channels (weights packed `[g, co, *k, ci]`) when a
//!   group has enough of them, else over the last input axis.
//! - `dx`, a stride above 1: the output an input element feeds is not affine in it, so `dy` is
//!   scattered (`dx[o·s + k·d] += dy[o]·w[k]`) into `dx`, or into a zero-padded copy then cropped.
//!   It is correct but accumulates through memory; kept because only strided layers use it.
//! - `dw[co, ci, k] = Σ_{n, o} dy_t[n, o, co] · xpad[n, g·Cg + ci, o·s + k·d]`, lanes over output
//!   channels, rows over the last window axis; `db[co] = Σ_{n, o} dy_t[n, o, co]`.

use super::super::activation;
use super::super::builder::{cst, fma, ix, ixs, local, set, Contraction, KernelBuilder, Tensor};
use super::super::loops::{Expr, Index, Kernel, Stmt};
use super::{copy, window_positions, ConvTensors, Dims, MIN_CHANNEL_LANES};
use crate::ir::{Activation, Conv};

/// What every gradient kernel of one convolution reads.
pub(super) struct Gradient<'a> {
    pub conv: &'a Conv,
    pub t: &'a ConvTensors<'a>,
    pub dims: &'a Dims,
    pub dy: &'a Tensor,
    pub epilogue: Option<Activation>,
}

/// `[N, C_out, *(I + (K − 1)·d)]`: every output a tap of an input element can reach.
pub(super) fn padded_dy_dims(conv: &Conv, dims: &Dims) -> Vec<usize> {
    let spatial = (0..dims.in_spatial.len())
        .map(|d| dims.in_spatial[d] + (conv.kernel[d] - 1) * conv.dilation[d]);
    [vec![dims.batch, conv.out_channels], spatial.collect()].concat()
}

impl Gradient<'_> {
    /// The gradient before the fused activation at `dy`'s coordinates `at`.
    pub fn pre_activation(&self, at: &[Index]) -> Expr {
        activation::through_epilogue(self.epilogue, self.t.y.load(at), self.dy.load(at))
    }

    /// The kernels that accumulate `dx`.
    pub fn input(&self, name: &str, dx: &Tensor) -> Vec<Kernel> {
        match super::unit_strides(self.conv) {
            true => self.input_correlation(name, dx),
            false => self.input_scatter(name, dx),
        }
    }

    fn input_correlation(&self, name: &str, dx: &Tensor) -> Vec<Kernel> {
        let (conv, dims, t) = (self.conv, self.dims, self.t);
        let reach = |d: usize| ((conv.kernel[d] - 1) * conv.dilation[d]) as i64;
        let shift: Vec<i64> = (0..conv.kernel.len())
            .map(|d| reach(d) - dims.pad_before[d] as i64)
            .collect();
        let padded = t.scratch.get("padded_dy");
        let mut kernels = vec![copy::shifted_copy(
            format!("{name}.pad_dy"),
            self.dy,
            padded,
            &shift,
            &|at| self.pre_activation(at),
        )];
        let channel_lanes = dims.in_per_group >= MIN_CHANNEL_LANES;
        if channel_lanes {
            let packed = t.scratch.get("packed_weight_t");
            kernels.push(copy::pack_weight(
                format!("{name}.pack_weight_t"),
                t.weight,
                packed,
                true,
            ));
        }
        let last = dims.last();
        let mut kb = KernelBuilder::new(format!("{name}.backward_input"));
        let n = kb.var(dims.batch);
        let g = kb.var(conv.groups);
        let outer = kb.vars(&dims.in_spatial[..last]);
        let (rows, lanes) = match channel_lanes {
            true => (kb.var(dims.in_spatial[last]), kb.var(dims.in_per_group)),
            false => (kb.var(dims.in_per_group), kb.var(dims.in_spatial[last])),
        };
        let (ci, i_last) = match channel_lanes {
            true => (lanes, rows),
            false => (rows, lanes),
        };
        let co = kb.var(dims.out_per_group);
        let window = kb.vars(&conv.kernel);
        let out_channel = ix(g) * dims.out_per_group as i64 + ix(co);
        let in_at = [ixs(&outer), vec![ix(i_last)]].concat();
        let taps: Vec<Index> = (0..=last)
            .map(|d| in_at[d].clone() - ix(window[d]) * conv.dilation[d] as i64 + reach(d))
            .collect();
        let w = match channel_lanes {
            true => t
                .scratch
                .get("packed_weight_t")
                .load(&[vec![ix(g), ix(co)], ixs(&window), vec![ix(ci)]].concat()),
            false => t
                .weight
                .load(&[vec![out_channel.clone(), ix(ci)], ixs(&window)].concat()),
        };
        let dx_at = [
            vec![ix(n), ix(g) * dims.in_per_group as i64 + ix(ci)],
            in_at,
        ]
        .concat();
        let nest = Contraction {
            rows: Some((rows, false)),
            lanes,
            reductions: [vec![co], window].concat(),
            init: dx.load(&dx_at),
            a: padded.load(&[vec![ix(n), out_channel], taps].concat()),
            b: w,
            out: dx.clone(),
            at: dx_at,
        };
        let nest = kb.contraction(nest, |acc| acc);
        let top = kb.parallel_for(n, vec![kb.for_(g, kb.nest(&outer, vec![nest]))]);
        kernels.push(kb.finish(vec![top]));
        kernels
    }

    /// `target[n, g·Cg + ci, o·s + k·d] += dy_t[n, o, co] · w[co, ci, k]` for `co, ci, k` in order
    /// (per element: `co, k` in order), the weight in a local, `o` innermost; `target` is `dx`
    /// without padding, else the zero-padded `padded_dx`, cropped into `dx` by a second kernel.
    fn input_scatter(&self, name: &str, dx: &Tensor) -> Vec<Kernel> {
        let (conv, dims, t) = (self.conv, self.dims, self.t);
        let target = match dims.padded() {
            true => t.scratch.get("padded_dx"),
            false => dx,
        };
        let dy_t = t.scratch.get("dy_t");
        let mut kb = KernelBuilder::new(format!("{name}.backward_input"));
        let n = kb.var(dims.batch);
        let g = kb.var(conv.groups);
        let co = kb.var(dims.out_per_group);
        let ci = kb.var(dims.in_per_group);
        let window = kb.vars(&conv.kernel);
        let out = kb.vars(&dims.out_spatial);
        let weight = kb.local();
        let out_channel = ix(g) * dims.out_per_group as i64 + ix(co);
        let in_channel = ix(g) * dims.in_per_group as i64 + ix(ci);
        let dy_at = [vec![ix(n)], ixs(&out), vec![out_channel.clone()]].concat();
        let at = [
            vec![ix(n), in_channel],
            window_positions(conv, &ixs(&out), &window),
        ]
        .concat();
        let update = target.store(&at, fma(dy_t.load(&dy_at), local(weight), target.load(&at)));
        let w_at = [vec![out_channel, ix(ci)], ixs(&window)].concat();
        let per_weight = [
            vec![set(weight, t.weight.load(&w_at))],
            kb.nest(&out, vec![update]),
        ]
        .concat();
        let mut per_image: Vec<Stmt> = Vec::new();
        if dims.padded() {
            let c = kb.var(conv.in_channels);
            let all = kb.vars(&dims.padded_spatial);
            let zero = target.store(&[vec![ix(n), ix(c)], ixs(&all)].concat(), cst(0.0));
            per_image.push(kb.for_(c, kb.nest(&all, vec![zero])));
        }
        per_image.push(kb.for_(
            g,
            vec![kb.for_(co, vec![kb.for_(ci, kb.nest(&window, per_weight))])],
        ));
        let top = kb.parallel_for(n, per_image);
        let mut kernels = vec![kb.finish(vec![top])];
        if dims.padded() {
            kernels.push(copy::crop_accumulate(
                format!("{name}.crop_dx"),
                target,
                dx,
                &dims.pad_before,
            ));
        }
        kernels
    }

    /// `dw` from `dy_t` and the padded input `source`. The top-level parallel loop is whichever of
    /// the group, the input channel and the first window axis has the most iterations (LeNet's
    /// conv1: the window's 5 rows; conv2: its 6 input channels); each output is summed whole
    /// inside one iteration.
    pub fn weight(&self, name: &str, source: &Tensor, dw: &Tensor) -> Kernel {
        let (conv, dims) = (self.conv, self.dims);
        let last = dims.last();
        let mut kb = KernelBuilder::new(format!("{name}.backward_weight"));
        let g = kb.var(conv.groups);
        let ci = kb.var(dims.in_per_group);
        let window = kb.vars(&conv.kernel);
        let (rows, co) = (window[last], kb.var(dims.out_per_group));
        let n = kb.var(dims.batch);
        let out = kb.vars(&dims.out_spatial);
        let out_channel = ix(g) * dims.out_per_group as i64 + ix(co);
        let in_channel = ix(g) * dims.in_per_group as i64 + ix(ci);
        let x_at = [
            vec![ix(n), in_channel],
            window_positions(conv, &ixs(&out), &window),
        ]
        .concat();
        let dy_at = [vec![ix(n)], ixs(&out), vec![out_channel.clone()]].concat();
        let nest = Contraction {
            rows: Some((rows, false)),
            lanes: co,
            reductions: [vec![n], out].concat(),
            init: cst(0.0),
            a: self.t.scratch.get("dy_t").load(&dy_at),
            b: source.load(&x_at),
            out: dw.clone(),
            at: [vec![out_channel, ix(ci)], ixs(&window)].concat(),
        };
        let nest = kb.contraction(nest, |acc| acc);
        let mut outer = [vec![g, ci], window[..last].to_vec()].concat();
        let extents = [
            vec![conv.groups, dims.in_per_group],
            conv.kernel[..last].to_vec(),
        ]
        .concat();
        let widest = (0..outer.len()).fold(
            0,
            |best, i| if extents[i] > extents[best] { i } else { best },
        );
        let parallel = outer.remove(widest);
        let top = kb.parallel_for(parallel, kb.nest(&outer, vec![nest]));
        kb.finish(vec![top])
    }

    /// `db[co] = Σ_{n, o} dy_t[n, o, co]` (`fma(dy, 1, acc)` is exactly `acc + dy`), lanes over
    /// the channels of a group, rows (parallel) over groups.
    pub fn bias(&self, name: &str, db: &Tensor) -> Kernel {
        let (conv, dims) = (self.conv, self.dims);
        let mut kb = KernelBuilder::new(format!("{name}.backward_bias"));
        let g = kb.var(conv.groups);
        let co = kb.var(dims.out_per_group);
        let n = kb.var(dims.batch);
        let out = kb.vars(&dims.out_spatial);
        let out_channel = ix(g) * dims.out_per_group as i64 + ix(co);
        let nest = Contraction {
            rows: Some((g, true)),
            lanes: co,
            reductions: [vec![n], out.clone()].concat(),
            init: cst(0.0),
            a: self
                .t
                .scratch
                .get("dy_t")
                .load(&[vec![ix(n)], ixs(&out), vec![out_channel.clone()]].concat()),
            b: cst(1.0),
            out: db.clone(),
            at: vec![out_channel],
        };
        let top = kb.contraction(nest, |acc| acc);
        kb.finish(vec![top])
    }
}
