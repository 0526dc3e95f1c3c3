//! The gradients of a convolution, each a contraction nest except the strided input gradient
//! with few input channels.
//!
//! - `dx`, lanes over input channels (a group has enough of them): a correlation of the
//!   zero-padded `dy` with the flipped weights,
//!   `dx[n, g·Cg + ci, i] += Σ_{co, k} dypad[n, co, i + (K − 1 − k)·d] · w[co, ci, k]`, with
//!   `dy[o]` spread to `dypad[o·s + (K − 1)·d − p]` and 0 everywhere else. An input `i` gets
//!   `dy[o]·w[k]` exactly when `i = o·s + k·d − p`, which is when the term lands on `o`'s place.
//!   The flip is in the index, so `k` still runs in increasing order; weights packed
//!   `[g, co, *k, ci]`. With a stride `s` most of `dypad` is zeros (3/4 at `s` = 2), and so are
//!   most of the products, but as a blocked nest it still ran 2–5× faster on ResNet-18's
//!   downsampling layers than the scatter below did (2026-11-30, `cnnc bench
//!   models/resnet18.cnn --batch 8 --threads 2 --layers`: the three 3×3 layers 36–66 → 13–16 ms,
//!   the three 1×1 layers 3.9–8.2 → 1.5–2.0 ms; the training step 16.2 → 20.7 images/s).
//! - `dx`, unit strides, few input channels (`input_rows`): per tap `k`, every product
//!   `w[co, ci, k] · dy[n, co, o]` added at `o + k·d` of a padded `dx`, lanes over the flattened
//!   positions of `dy` (rows widened to the padded input's), then cropped into `dx`. Only the
//!   products that exist, where the correlation would also multiply the padding's zeros.
//! - `dx`, a stride above 1 and few input channels: `dy` is scattered
//!   (`dx[o·s + k·d] += dy[o]·w[k]`) into `dx`, or into a zero-padded copy then cropped. It is
//!   correct but accumulates through memory (AlexNet's first layer, whose input gradient a
//!   network does not need, is the kind that reaches it).
//! - `dw[co, ci, k] = Σ_{n, o} dy_t[n, o, co] · xpad[n, g·Cg + ci, o·s + k·d]`, lanes over output
//!   channels, rows over the last window axis, the reduction cut into tiles that fit in cache
//!   when `dy_t` is large (VGG's 112×112 layers: 2.1× faster, 2026-11-30); `db[co] =
//!   Σ_{n, o} dy_t[n, o, co]`.

use super::super::activation;
use super::super::builder::{cst, fma, ix, ixs, local, set, Contraction, KernelBuilder, Tensor};
use super::super::loops::{Expr, Index, Kernel, Stmt, Var};
use super::{copy, window_positions, ConvTensors, Dims, MIN_CHANNEL_LANES};
use crate::ir::{Activation, Conv};

/// Most bytes of `dy_t` one tile of the weight gradient's reduction reads ([`Gradient::weight_channels`]):
/// a quarter of the 1 MiB per-core L2 cache of the machine the figures were measured on, so that
/// the tile stays there with the input rows it meets.
const TILE_BYTES: usize = 256 * 1024;

/// Fewest reduction steps a tile of the weight gradient sums in its nest: shorter ones spend
/// their time loading and storing the partial sums.
const MIN_TILE_STEPS: usize = 256;

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

/// Whether the input gradient's lanes run over input channels (a group has enough of them).
pub(super) fn input_channel_lanes(dims: &Dims) -> bool {
    dims.in_per_group >= MIN_CHANNEL_LANES
}

/// `[N, C_out, O_0, P_1, ..]`: `dy` with every row but the first axis widened to the padded
/// input's size (`input_rows`).
pub(super) fn dy_rows_dims(conv: &Conv, dims: &Dims) -> Vec<usize> {
    [
        vec![dims.batch, conv.out_channels, dims.out_spatial[0]],
        dims.padded_spatial[1..].to_vec(),
    ]
    .concat()
}

/// `[N, C_in, P_0 + 1, P_1, ..]`: the padded input gradient with a spare slab (`input_rows`).
pub(super) fn wide_dx_dims(conv: &Conv, dims: &Dims) -> Vec<usize> {
    [
        vec![dims.batch, conv.in_channels, dims.padded_spatial[0] + 1],
        dims.padded_spatial[1..].to_vec(),
    ]
    .concat()
}

/// Whether the weight and bias gradients run with lanes over the output's last axis (few output
/// channels, unit strides: LeNet's conv1, 6 channels) instead of over output channels.
pub(super) fn weight_position_lanes(conv: &Conv, dims: &Dims) -> bool {
    dims.out_per_group < MIN_CHANNEL_LANES && super::unit_strides(conv)
}

/// `out[e] = Σ_l partial[.., l]` over the last axis of `partial` (`out`'s elements then that
/// axis, row-major), `l` in order, one output element at a time (`fma(p, 1, acc)` is `acc + p`).
fn sum_lanes(kb: &mut KernelBuilder, partial: &Tensor, out: &Tensor) -> Stmt {
    let elements = out.dims.iter().product::<usize>();
    let lanes = partial.dims.iter().product::<usize>() / elements.max(1);
    let (e, l) = (kb.var(elements), kb.var(lanes));
    let sum = Contraction {
        rows: None,
        lanes: e,
        reductions: vec![l],
        init: cst(0.0),
        a: partial.view(vec![elements, lanes]).load(&[ix(e), ix(l)]),
        b: cst(1.0),
        out: out.view(vec![elements]),
        at: vec![ix(e)],
    };
    kb.contraction(sum, |acc| acc)
}

impl Gradient<'_> {
    /// The gradient before the fused activation at `dy`'s coordinates `at`.
    pub fn pre_activation(&self, at: &[Index]) -> Expr {
        activation::through_epilogue(self.epilogue, self.t.y.load(at), self.dy.load(at))
    }

    /// The kernels that accumulate `dx`.
    pub fn input(&self, name: &str, dx: &Tensor) -> Vec<Kernel> {
        match (
            super::unit_strides(self.conv),
            input_channel_lanes(self.dims),
        ) {
            (_, true) => self.input_correlation(name, dx),
            (true, false) => self.input_rows(name, dx),
            (false, false) => self.input_scatter(name, dx),
        }
    }

    /// Unit strides, few input channels: every tap `k` adds `w[co, ci, k] · dy[n, co, o]` to
    /// `dx` at `o + k·d`, exactly the products that exist (the correlation of a padded `dy`
    /// would multiply `(O + K − 1)/O` times as many per axis, most of them by zero on small
    /// images: LeNet's conv2, 14² outputs from 10² gradients through 5×5 taps, ~2×).
    ///
    /// The positions are flattened into one lane axis: `dy` is copied (through the fused
    /// activation's derivative) into `dy_rows [N, C_out, O_0, P_1, ..]`, each row widened to
    /// the padded input's `P` with zeros; then for each tap, `padded_dx[n, ci, base(k) + q] +=
    /// Σ_co w[co, ci, k] · dy_rows[n, co, q]` for every `q < O_0·P_1·..`, with `base(k) =
    /// Σ_d k_d·d_d·stride_d` in the padded layout. A real position `o` lands on `o + k·d`,
    /// inside its row; a widening zero lands past the row's end (at most into the next row,
    /// or the spare slab `padded_dx` has past the last one) and adds nothing. Then `dx +=` the
    /// crop of `padded_dx`. Per `dx` element the sum runs over `k` in order, each tap's `co`
    /// in order, and is added to `dx` last.
    fn input_rows(&self, name: &str, dx: &Tensor) -> Vec<Kernel> {
        let (conv, dims, t) = (self.conv, self.dims, self.t);
        let rank = dims.in_spatial.len();
        let rows_dy = t.scratch.get("dy_rows");
        let wide = t.scratch.get("padded_dx");
        let mut kernels = vec![copy::shifted_copy(
            format!("{name}.widen_dy"),
            self.dy,
            rows_dy,
            &vec![0; rank],
            &|at| self.pre_activation(at),
        )];
        // Strides of the padded spatial layout, and the flattened sizes.
        let stride: Vec<usize> = (0..rank)
            .map(|d| dims.padded_spatial[d + 1..].iter().product())
            .collect();
        let lanes_len = dims.out_spatial[0] * stride[0];
        let per_channel = (dims.padded_spatial[0] + 1) * stride[0];
        let flat_dy = rows_dy.view(vec![dims.batch, conv.out_channels, lanes_len]);
        let flat_dx = wide.view(vec![dims.batch, conv.in_channels, per_channel]);

        let mut kb = KernelBuilder::new(format!("{name}.backward_input"));
        let n = kb.var(dims.batch);
        let (c, e) = (kb.var(conv.in_channels), kb.var(per_channel));
        let zero = kb.for_(
            c,
            vec![kb.for_(e, vec![flat_dx.store(&[ix(n), ix(c), ix(e)], cst(0.0))])],
        );
        let g = kb.var(conv.groups);
        let window = kb.vars(&conv.kernel);
        let ci = kb.var(dims.in_per_group);
        let q = kb.var(lanes_len);
        let co = kb.var(dims.out_per_group);
        let base = (0..rank).fold(ix(q), |at, d| {
            at + ix(window[d]) * (conv.dilation[d] * stride[d]) as i64
        });
        let out_channel = ix(g) * dims.out_per_group as i64 + ix(co);
        let at = vec![ix(n), ix(g) * dims.in_per_group as i64 + ix(ci), base];
        let nest = Contraction {
            rows: Some((ci, false)),
            lanes: q,
            reductions: vec![co],
            init: flat_dx.load(&at),
            a: flat_dy.load(&[ix(n), out_channel.clone(), ix(q)]),
            b: t.weight
                .load(&[vec![out_channel, ix(ci)], ixs(&window)].concat()),
            out: flat_dx.clone(),
            at,
        };
        let nest = kb.contraction(nest, |acc| acc);
        let top = kb.parallel_for(n, vec![zero, kb.for_(g, kb.nest(&window, vec![nest]))]);
        kernels.push(kb.finish(vec![top]));
        kernels.push(copy::crop_accumulate(
            format!("{name}.crop_dx"),
            wide,
            dx,
            &dims.pad_before,
        ));
        kernels
    }

    fn input_correlation(&self, name: &str, dx: &Tensor) -> Vec<Kernel> {
        let (conv, dims, t) = (self.conv, self.dims, self.t);
        let reach = |d: usize| ((conv.kernel[d] - 1) * conv.dilation[d]) as i64;
        let shift: Vec<i64> = (0..conv.kernel.len())
            .map(|d| reach(d) - dims.pad_before[d] as i64)
            .collect();
        let padded_dy = t.scratch.get("padded_dy");
        let stride: Vec<i64> = conv.stride.iter().map(|&s| s as i64).collect();
        let mut kernels = vec![copy::spread_copy(
            format!("{name}.pad_dy"),
            self.dy,
            padded_dy,
            &stride,
            &shift,
            &|at| self.pre_activation(at),
        )];
        let packed = t.scratch.get("packed_weight_t");
        kernels.push(copy::pack_weight(
            format!("{name}.pack_weight_t"),
            t.weight,
            packed,
            true,
        ));
        let last = dims.last();
        let mut kb = KernelBuilder::new(format!("{name}.backward_input"));
        let n = kb.var(dims.batch);
        let g = kb.var(conv.groups);
        let outer = kb.vars(&dims.in_spatial[..last]);
        let (rows, ci) = (kb.var(dims.in_spatial[last]), kb.var(dims.in_per_group));
        let co = kb.var(dims.out_per_group);
        let window = kb.vars(&conv.kernel);
        let out_channel = ix(g) * dims.out_per_group as i64 + ix(co);
        let in_at = [ixs(&outer), vec![ix(rows)]].concat();
        let taps: Vec<Index> = (0..=last)
            .map(|d| in_at[d].clone() - ix(window[d]) * conv.dilation[d] as i64 + reach(d))
            .collect();
        let w = packed.load(&[vec![ix(g), ix(co)], ixs(&window), vec![ix(ci)]].concat());
        let dx_at = [
            vec![ix(n), ix(g) * dims.in_per_group as i64 + ix(ci)],
            in_at,
        ]
        .concat();
        let nest = Contraction {
            rows: Some((rows, false)),
            lanes: ci,
            reductions: [vec![co], window].concat(),
            init: dx.load(&dx_at),
            a: padded_dy.load(&[vec![ix(n), out_channel], taps].concat()),
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

    /// `dw` from `dy_t` and the padded input `source`, then `db` if there is a bias ([`Self::bias`],
    /// a nest of the same kernel). The top-level parallel loop is whichever of the group, the
    /// input channel and the first window axis has the most iterations (LeNet's conv1: the
    /// window's 5 rows; conv2: its 6 input channels); each output is summed whole inside one
    /// iteration.
    pub fn weight_channels(
        &self,
        name: &str,
        source: &Tensor,
        dw: &Tensor,
        db: Option<&Tensor>,
    ) -> Kernel {
        let (conv, dims) = (self.conv, self.dims);
        let last = dims.last();
        let mut kb = KernelBuilder::new(format!("{name}.backward_weight"));
        let g = kb.var(conv.groups);
        let ci = kb.var(dims.in_per_group);
        let window = kb.vars(&conv.kernel);
        let (rows, co) = (window[last], kb.var(dims.out_per_group));
        // The reduction over `n, *o` in tiles: the innermost of those loops whose slice of `dy_t`
        // fits in [`TILE_BYTES`] are summed in the nest, the others run outside it (outside the
        // channel and window loops too), so that each tile of `dy_t` is read from cache by every
        // output instead of from memory. The sums then continue from what the previous tile
        // stored in `dw`, zeroed first; each output still adds the same terms in the same order.
        // A loop whose whole extent would overflow the tile before it holds [`MIN_TILE_STEPS`]
        // steps (LeNet's conv2: 100 output positions, then 256 images of 6.4 KB) is split in
        // two, its inner part the largest divisor of its extent that fits and makes the steps
        // (LeNet at batch 256: 8 tiles of 32 images, 204,800 bytes and 3,200 steps each; its
        // training step on 1 thread 13,800–14,100 → 14,500–14,900 img/s, on 2 threads
        // 26,300–26,700 → 27,400–28,100, 2026-12-02, Intel host; ResNet-18, NiN and AlexNet at
        // batch 8 unchanged).
        let extents = [vec![dims.batch], dims.out_spatial.clone()].concat();
        let row_bytes = 4 * conv.out_channels;
        let mut inner = extents.len();
        let mut tile_bytes = row_bytes;
        let mut steps = 1;
        let mut split = None;
        while inner > 0 {
            let extent = extents[inner - 1];
            if tile_bytes * extent <= TILE_BYTES || steps >= MIN_TILE_STEPS {
                if tile_bytes * extent > TILE_BYTES {
                    break;
                }
            } else if let Some(part) = (2..extent).rev().find(|&d| {
                extent % d == 0 && tile_bytes * d <= TILE_BYTES && steps * d >= MIN_TILE_STEPS
            }) {
                split = Some((inner - 1, part));
                break;
            }
            inner -= 1;
            tile_bytes *= extent;
            steps *= extent;
        }
        // The reduction loops, outermost first, with the split one as two (outer, inner), and
        // each loop's index (the split one's `outer·part + inner`).
        let mut reductions = Vec::new();
        let mut at = Vec::new();
        for (d, &extent) in extents.iter().enumerate() {
            match split {
                Some((s, part)) if s == d => {
                    let (outer, within) = (kb.var(extent / part), kb.var(part));
                    reductions.extend([outer, within]);
                    at.push(ix(outer) * part as i64 + ix(within));
                }
                _ => {
                    let v = kb.var(extent);
                    reductions.push(v);
                    at.push(ix(v));
                }
            }
        }
        // Loops outside the nest: those before the tile (and a split loop's outer part).
        let inner = match split {
            Some((s, _)) => s + 1,
            None => inner.min(extents.len() - 1),
        };
        let (n_at, out_at) = at.split_first().expect("a batch axis");
        let out_channel = ix(g) * dims.out_per_group as i64 + ix(co);
        let in_channel = ix(g) * dims.in_per_group as i64 + ix(ci);
        let x_at = [
            vec![n_at.clone(), in_channel],
            window_positions(conv, out_at, &window),
        ]
        .concat();
        let dy_at = [
            vec![n_at.clone()],
            out_at.to_vec(),
            vec![out_channel.clone()],
        ]
        .concat();
        let dw_at = [vec![out_channel, ix(ci)], ixs(&window)].concat();
        let tiled = inner > 0;
        let nest = Contraction {
            rows: Some((rows, false)),
            lanes: co,
            reductions: reductions[inner..].to_vec(),
            init: if tiled { dw.load(&dw_at) } else { cst(0.0) },
            a: self.t.scratch.get("dy_t").load(&dy_at),
            b: source.load(&x_at),
            out: dw.clone(),
            at: dw_at.clone(),
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
        let per_tile = kb.nest(&outer, vec![nest]);
        let body = if tiled {
            // This iteration's outputs: `dw_at` over fresh loops but the parallel one.
            let mut fresh = |v: Var| match v == parallel {
                true => v,
                false => kb.var(kb.extent(v)),
            };
            let (g0, ci0, co0) = (fresh(g), fresh(ci), fresh(co));
            let window0: Vec<Var> = window.iter().map(|&v| fresh(v)).collect();
            let at = [
                vec![ix(g0) * dims.out_per_group as i64 + ix(co0), ix(ci0)],
                ixs(&window0),
            ]
            .concat();
            let zero_vars: Vec<Var> = [vec![g0, ci0], window0, vec![co0]]
                .concat()
                .into_iter()
                .filter(|&v| v != parallel)
                .collect();
            let zero = dw.store(&at, cst(0.0));
            [
                kb.nest(&zero_vars, vec![zero]),
                kb.nest(&reductions[..inner], per_tile),
            ]
            .concat()
        } else {
            per_tile
        };
        let mut top = vec![kb.parallel_for(parallel, body)];
        top.extend(db.map(|db| self.bias(&mut kb, db)));
        kb.finish(top)
    }

    /// The kernels that write `dw` (and `db` if there is a bias) from the padded input `source`.
    pub fn weight_and_bias(
        &self,
        name: &str,
        source: &Tensor,
        dw: &Tensor,
        db: Option<&Tensor>,
    ) -> Vec<Kernel> {
        match weight_position_lanes(self.conv, self.dims) {
            true => vec![self.weight_positions(name, source, dw, db)],
            false => vec![self.weight_channels(name, source, dw, db)],
        }
    }

    /// `dw` and `db` in one kernel, lanes over the output's last axis `l`, each lane summing
    /// its own column first: `dw_lanes[co, ci, k, l] = Σ_{n, o'} dy_pre[n, co, o', l] ·
    /// xpad[n, g·Cg + ci, (o', l) + k·d]` (`o'` the other output axes; zeroed, then per image
    /// `n` a nest over `o'` adds to it, rows over the last window axis, parallel over the
    /// widest of group, output channel, input channel and the other window axes), `db_lanes[co,
    /// l] = Σ_{n, o'} dy_pre[n, co, o', l]` (the same way, beside the weight's nest when the
    /// slices are output channels, else in a pass parallel over channels), then `dw = Σ_l
    /// dw_lanes`, `db = Σ_l db_lanes`, `l` in order. Every product fills a lane, where lanes
    /// over 6 channels would leave a quarter of them idle, and `dy` is read as it lies (after
    /// an element-wise copy through the fused activation) instead of transposed.
    fn weight_positions(
        &self,
        name: &str,
        source: &Tensor,
        dw: &Tensor,
        db: Option<&Tensor>,
    ) -> Kernel {
        let (conv, dims) = (self.conv, self.dims);
        let last = dims.last();
        let lanes_len = dims.out_spatial[last];
        let dy_pre = self.t.scratch.get("dy_pre");
        let dw_lanes = self.t.scratch.get("dw_lanes");
        let mut kb = KernelBuilder::new(format!("{name}.backward_weight"));
        let g = kb.var(conv.groups);
        let co = kb.var(dims.out_per_group);
        let ci = kb.var(dims.in_per_group);
        let window = kb.vars(&conv.kernel);
        let n = kb.var(dims.batch);
        let out = kb.vars(&dims.out_spatial);
        let out_channel = ix(g) * dims.out_per_group as i64 + ix(co);
        let in_channel = ix(g) * dims.in_per_group as i64 + ix(ci);
        let dy_at = [vec![ix(n), out_channel.clone()], ixs(&out)].concat();
        let x_at = [
            vec![ix(n), in_channel],
            window_positions(conv, &ixs(&out), &window),
        ]
        .concat();
        let at = [
            vec![out_channel.clone(), ix(ci)],
            ixs(&window),
            vec![ix(out[last])],
        ]
        .concat();
        let nest = Contraction {
            rows: Some((window[last], false)),
            lanes: out[last],
            reductions: out[..last].to_vec(),
            init: dw_lanes.load(&at),
            a: dy_pre.load(&dy_at),
            b: source.load(&x_at),
            out: dw_lanes.clone(),
            at,
        };
        let nest = kb.contraction(nest, |acc| acc);
        let mut outer = [vec![g, co, ci], window[..last].to_vec()].concat();
        let extents = [
            vec![conv.groups, dims.out_per_group, dims.in_per_group],
            conv.kernel[..last].to_vec(),
        ]
        .concat();
        let widest = (0..outer.len()).fold(
            0,
            |best, i| if extents[i] > extents[best] { i } else { best },
        );
        let parallel = outer.remove(widest);
        // The images outside the nest, so that one image's `dy` and `x` stay in cache while
        // every output of the thread's slice takes its terms (one sum per lane, through memory:
        // the same order of terms as with `n` among the reductions).
        let mut per_image = kb.nest(&outer, vec![nest]);
        let db_lanes = db.map(|_| self.t.scratch.get("db_lanes"));
        let mut top: Vec<Stmt> = [Some(dw_lanes), db_lanes]
            .into_iter()
            .flatten()
            .map(|lanes| {
                let elements = lanes.dims.iter().product::<usize>();
                let z = kb.var(elements);
                let flat = lanes.view(vec![elements]);
                kb.for_(z, vec![flat.store(&[ix(z)], cst(0.0))])
            })
            .collect();
        let mut bias_pass = None;
        if let Some(db_lanes) = db_lanes {
            // `db_lanes[c, l] += Σ_{o'} dy_pre[n, c, o', l]` for one image `n` (images, then
            // `o'`: the order a single pass over both had). When the threads' slices are output
            // channels it runs in them, beside the weight's nest, on the `dy` it has just read:
            // as a pass of its own it read `dy` from memory again, four times over for its
            // blocks of lanes (0.4 of `conv1.backward_weight`'s 1.8 ms in LeNet at batch 256 on
            // 1 thread, now 0.07; Intel host, 2026-12-03). Otherwise it is a pass of its own,
            // parallel over channels.
            let bias_nest = |kb: &mut KernelBuilder, n: Var, channel: Index| {
                let l = kb.var(lanes_len);
                let other = kb.vars(&dims.out_spatial[..last]);
                let at = [vec![ix(n), channel.clone()], ixs(&other), vec![ix(l)]].concat();
                let columns = Contraction {
                    rows: None,
                    lanes: l,
                    reductions: other,
                    init: db_lanes.load(&[channel.clone(), ix(l)]),
                    a: dy_pre.load(&at),
                    b: cst(1.0),
                    out: db_lanes.clone(),
                    at: vec![channel, ix(l)],
                };
                kb.contraction(columns, |acc| acc)
            };
            if parallel == co {
                let g = kb.var(conv.groups);
                let channel = ix(g) * dims.out_per_group as i64 + ix(co);
                let nest = bias_nest(&mut kb, n, channel);
                per_image.push(kb.for_(g, vec![nest]));
            } else {
                let (c, n) = (kb.var(conv.out_channels), kb.var(dims.batch));
                let nest = bias_nest(&mut kb, n, ix(c));
                let images = kb.for_(n, vec![nest]);
                bias_pass = Some(kb.parallel_for(c, vec![images]));
            }
        }
        top.push(kb.parallel_for(parallel, vec![kb.for_(n, per_image)]));
        top.extend(bias_pass);
        top.push(sum_lanes(&mut kb, dw_lanes, dw));
        if let (Some(db), Some(db_lanes)) = (db, db_lanes) {
            top.push(sum_lanes(&mut kb, db_lanes, db));
        }
        kb.finish(top)
    }

    /// `db[co] = Σ_{n, o} dy_t[n, o, co]` (`fma(dy, 1, acc)` is exactly `acc + dy`), lanes over
    /// the channels of a group, rows (parallel) over groups: a nest of the weight gradient's
    /// kernel, after the weight's.
    fn bias(&self, kb: &mut KernelBuilder, db: &Tensor) -> Stmt {
        let (conv, dims) = (self.conv, self.dims);
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
        kb.contraction(nest, |acc| acc)
    }
}
