//! Fully connected layer (`nn.Linear`): `y = x Wᵀ + b` with `x [N, F]`, `W [U, F]`, `y [N, U]`.
//!
//! Every product is a contraction nest (`loops`, "Contraction nests"): the lanes run along an
//! axis where the output and the operand that changes with it are contiguous (`u` of a packed
//! `Wᵀ` for the forward, `f` of `W` and `x` for the gradients), the other operand is broadcast,
//! and the sum stays in a register. Each output sums over its reduction index in increasing
//! order, starting from the bias (forward), the accumulated `dx`, or 0, so the results do not
//! depend on the JIT's blocking or the thread count. Rows are split into chunks of
//! [`ROWS_PER_CHUNK`] (the weight gradient's units: [`UNITS_PER_CHUNK`]) under a parallel loop
//! (`builder::row_chunks`); with a weight too big for
//! the cache (AlexNet's, VGG's), the forward and the input gradient are cache-blocked instead
//! ([`Product::tiled`]), with the same sums.

use super::activation;
use super::builder::{
    cst, ix, row_chunks, Contraction, KernelBuilder, Scratch, ScratchSpec, Tensor,
};
use super::loops::{Expr, Index, Kernel, Stmt};
use crate::ir::{Activation, Dense};

/// The tensors of one dense layer; `x` is viewed as `[N, F]` whatever its shape (flatten aliases).
pub struct DenseTensors<'a> {
    pub x: &'a Tensor,
    pub weight: &'a Tensor,
    pub bias: Option<&'a Tensor>,
    pub y: &'a Tensor,
    /// The buffers [`scratch`] asked for.
    pub scratch: &'a Scratch,
}

/// Rows (samples or units) per iteration of the parallel loop: enough for the JIT to block
/// several rows, few enough that LeNet's batch of 256 gives every thread many chunks.
const ROWS_PER_CHUNK: usize = 8;

/// Units per iteration of the weight gradient's parallel loop: one block of rows, so that
/// LeNet's 120 and 84 units split evenly over 2 threads (30 and 21 chunks, where 8 gave 15,
/// and 10 plus a second parallel loop for the last 4). LeNet at batch 256 on 2 threads,
/// alternating, 2026-12-03: training 28,970–29,200 → 29,360–29,720 img/s; batches 64 and 8
/// unchanged. (Chunks of 4 for every dense kernel: batch-8 training 8% slower, its forward's
/// 8 samples then split over the threads.)
const UNITS_PER_CHUNK: usize = 4;

/// The scratch buffers of a dense layer: `packed_weight` (`Wᵀ`, `[F, U]`), and with a fused
/// activation and a gradient, `dz` (`[N, U]`, the gradient before the activation).
pub fn scratch(
    dense: &Dense,
    x: &Tensor,
    has_gradient: bool,
    epilogue: Option<Activation>,
) -> Vec<ScratchSpec> {
    let mut specs = vec![ScratchSpec {
        name: "packed_weight",
        dims: vec![dense.in_features, dense.units],
    }];
    if has_gradient && epilogue.is_some() {
        specs.push(ScratchSpec {
            name: "dz",
            dims: vec![x.dims[0], dense.units],
        });
    }
    specs
}

/// `Wᵀ` packed into scratch, then `y[n, u] = act(b[u] + Σ_f x[n, f] · Wᵀ[f, u])` with lanes over
/// `u` and rows over `n`, parallel over chunks of the batch.
pub fn forward(
    name: &str,
    dense: &Dense,
    t: &DenseTensors,
    epilogue: Option<Activation>,
) -> Vec<Kernel> {
    let x = t.x.rows();
    let packed = t.scratch.get("packed_weight");
    let pack = pack_weight(name, dense, t.weight, packed);
    let tiled = Product {
        name: format!("{name}.forward"),
        rows: x.dims[0],
        lanes: dense.units,
        reduction: dense.in_features,
        a: &|n, f| x.load(&[n, f]),
        b: &|f, u| packed.load(&[f, u]),
        out: t.y,
        init: Some(&|u| t.bias.map_or(cst(0.0), |b| b.load(&[u]))),
        epilogue,
    }
    .tiled();
    if let Some(kernel) = tiled {
        return vec![pack, kernel];
    }
    let mut kb = KernelBuilder::new(format!("{name}.forward"));
    let top = row_chunks(&mut kb, x.dims[0], ROWS_PER_CHUNK, |kb, i, n, parallel| {
        let (u, f) = (kb.var(dense.units), kb.var(dense.in_features));
        let nest = Contraction {
            rows: Some((i, parallel)),
            lanes: u,
            reductions: vec![f],
            init: t.bias.map_or(cst(0.0), |b| b.load(&[ix(u)])),
            a: x.load(&[n.clone(), ix(f)]),
            b: packed.load(&[ix(f), ix(u)]),
            out: t.y.clone(),
            at: vec![n, ix(u)],
        };
        kb.contraction(nest, |acc| activation::fused(epilogue, acc))
    });
    vec![pack, kb.finish(top)]
}

/// `Wᵀ[f, u] = W[u, f]`, the units in blocks of [`PACK_BLOCK`] split over threads, then the
/// rest: each block writes a cache line per feature and reads 16 rows of `W` front to back.
/// With the units innermost over all of them and the features split (the first version), each
/// read touched a new line of `W`: VGG's 25088×4096 weights took 363 ms to pack per training
/// step, AlexNet's 6400×4096 93 ms (2026-11-30, 2 threads).
fn pack_weight(name: &str, dense: &Dense, w: &Tensor, packed: &Tensor) -> Kernel {
    let mut kb = KernelBuilder::new(format!("{name}.pack_weight"));
    let body = kb.in_blocks(dense.units, PACK_BLOCK, |kb, first, width| {
        let (f, u) = (kb.var(dense.in_features), kb.var(width));
        let unit = first + ix(u);
        let copy = packed.store(&[ix(f), unit.clone()], w.load(&[unit, ix(f)]));
        vec![kb.for_(f, vec![kb.for_(u, vec![copy])])]
    });
    kb.finish(body)
}

/// Units of packed weights copied together: 16 `f32`s, one 64-byte cache line.
const PACK_BLOCK: usize = 16;

/// Kernels for `dz` (with a fused activation: `dy` is then the gradient of the activated
/// output), `dx` (if the input needs one), `dW` and `db` (if there is a bias).
#[allow(clippy::too_many_arguments)]
pub fn backward(
    name: &str,
    dense: &Dense,
    t: &DenseTensors,
    dy: &Tensor,
    dx: Option<&Tensor>,
    dweight: &Tensor,
    dbias: Option<&Tensor>,
    epilogue: Option<Activation>,
) -> Vec<Kernel> {
    let mut kernels = Vec::new();
    let dz = match epilogue {
        None => dy,
        Some(act) => {
            let dz = t.scratch.get("dz");
            kernels.push(activation::epilogue_gradient(name, act, t.y, dy, dz));
            dz
        }
    };
    kernels.extend(dx.map(|dx| backward_input(name, dense, t, dz, dx)));
    kernels.push(backward_weight(name, dense, t, dz, dweight, dbias));
    kernels
}

/// `dx[n, f] += Σ_u dy[n, u] · W[u, f]` (from the accumulated `dx`, `u` in order), lanes over
/// `f` (rows of `W` and `dx`), rows over `n`, parallel over chunks of the batch.
fn backward_input(name: &str, dense: &Dense, t: &DenseTensors, dy: &Tensor, dx: &Tensor) -> Kernel {
    let dx = dx.rows();
    let tiled = Product {
        name: format!("{name}.backward_input"),
        rows: dx.dims[0],
        lanes: dense.in_features,
        reduction: dense.units,
        a: &|n, u| dy.load(&[n, u]),
        b: &|u, f| t.weight.load(&[u, f]),
        out: &dx,
        init: None,
        epilogue: None,
    }
    .tiled();
    if let Some(kernel) = tiled {
        return kernel;
    }
    let mut kb = KernelBuilder::new(format!("{name}.backward_input"));
    let top = row_chunks(&mut kb, dx.dims[0], ROWS_PER_CHUNK, |kb, i, n, parallel| {
        let (f, u) = (kb.var(dense.in_features), kb.var(dense.units));
        let at = vec![n.clone(), ix(f)];
        let nest = Contraction {
            rows: Some((i, parallel)),
            lanes: f,
            reductions: vec![u],
            init: dx.load(&at),
            a: dy.load(&[n, ix(u)]),
            b: t.weight.load(&[ix(u), ix(f)]),
            out: dx.clone(),
            at,
        };
        kb.contraction(nest, |acc| acc)
    });
    kb.finish(top)
}

/// `dW[u, f] = Σ_n dy[n, u] · x[n, f]` (`n` in order), lanes over `f`, rows over `u`, parallel
/// over chunks of [`UNITS_PER_CHUNK`] units.
fn backward_weight(
    name: &str,
    dense: &Dense,
    t: &DenseTensors,
    dy: &Tensor,
    dw: &Tensor,
    db: Option<&Tensor>,
) -> Kernel {
    let x = t.x.rows();
    let mut kb = KernelBuilder::new(format!("{name}.backward_weight"));
    let mut top = row_chunks(
        &mut kb,
        dense.units,
        UNITS_PER_CHUNK,
        |kb, i, u, parallel| {
            let (f, n) = (kb.var(dense.in_features), kb.var(x.dims[0]));
            let nest = Contraction {
                rows: Some((i, parallel)),
                lanes: f,
                reductions: vec![n],
                init: cst(0.0),
                a: dy.load(&[ix(n), u.clone()]),
                b: x.load(&[ix(n), ix(f)]),
                out: dw.clone(),
                at: vec![u, ix(f)],
            };
            kb.contraction(nest, |acc| acc)
        },
    );
    top.extend(db.map(|db| bias_sum(&mut kb, dense, dy, db)));
    kb.finish(top)
}

/// `db[u] = Σ_n dy[n, u]` (`n` in order; `fma(dy, 1, acc)` is exactly `acc + dy`), lanes over
/// units, on one thread (`N·U` additions, too few to split): a nest of the weight gradient's
/// kernel, after the weight's.
fn bias_sum(kb: &mut KernelBuilder, dense: &Dense, dy: &Tensor, db: &Tensor) -> Stmt {
    let (u, n) = (kb.var(dense.units), kb.var(dy.dims[0]));
    let nest = Contraction {
        rows: None,
        lanes: u,
        reductions: vec![n],
        init: cst(0.0),
        a: dy.load(&[ix(n), ix(u)]),
        b: cst(1.0),
        out: db.clone(),
        at: vec![ix(u)],
    };
    kb.contraction(nest, |acc| acc)
}

/// A weight too big for the cache, in bytes: from here on the products run in tiles
/// ([`Product::tiled`]). 8 MiB, between the 1 MiB per-core L2 and the shared L3 of the
/// machine the figures were measured on; LeNet's and NiN's dense weights are far below it.
const TILE_WEIGHTS_ABOVE: usize = 8 << 20;

/// Lanes (units or features) of one parallel block of a tiled product, and the most
/// reduction steps of one tile: a tile of the weight is at most 64 × 512 `f32`s, 128 KiB.
const TILE_LANES: usize = 64;
const TILE_STEPS: usize = 512;

/// `out[n, l] = epilogue(init(l) + Σ_r a(n, r) · b(r, l))` (`init` `None`: summing on from
/// `out`), `r` in increasing order.
struct Product<'a> {
    name: String,
    rows: usize,
    lanes: usize,
    reduction: usize,
    a: &'a dyn Fn(Index, Index) -> Expr,
    b: &'a dyn Fn(Index, Index) -> Expr,
    out: &'a Tensor,
    init: Option<&'a dyn Fn(Index) -> Expr>,
    epilogue: Option<Activation>,
}

impl Product<'_> {
    /// The product cache-blocked, when its weight `b` is bigger than [`TILE_WEIGHTS_ABOVE`]
    /// and its sizes divide into tiles; `None` otherwise (the untiled nests then serve).
    ///
    /// Untiled, every block of 4 rows streams the whole weight from memory (AlexNet's
    /// 6400×4096 `backward_input` ran at 7.7 GFLOP/s at batch 8, 2026-11-30). Tiled, the
    /// parallel loop runs over blocks of [`TILE_LANES`] lanes; in each, `out` is first set to
    /// `init`, then the reduction runs in tiles of at most [`TILE_STEPS`] steps, each tile of
    /// the weight read once from memory and then from cache by every row, the sums going on
    /// from `out`; the epilogue, if any, is a last pass over the block. Each output still
    /// adds the same terms in the same order to the same start, so the bits are those of the
    /// untiled nest.
    fn tiled(&self) -> Option<Kernel> {
        if self.reduction * self.lanes * 4 <= TILE_WEIGHTS_ABOVE
            || !self.lanes.is_multiple_of(TILE_LANES)
        {
            return None;
        }
        let steps = (1..=TILE_STEPS.min(self.reduction))
            .rev()
            .find(|&s| self.reduction.is_multiple_of(s))
            .filter(|&s| s >= 64)?;
        let mut kb = KernelBuilder::new(self.name.clone());
        let block = kb.var(self.lanes / TILE_LANES);
        let lane_at = |l| ix(block) * TILE_LANES as i64 + ix(l);
        let mut body = Vec::new();
        if let Some(init) = self.init {
            let (n, l) = (kb.var(self.rows), kb.var(TILE_LANES));
            let set = self.out.store(&[ix(n), lane_at(l)], init(lane_at(l)));
            body.push(kb.for_(n, vec![kb.for_(l, vec![set])]));
        }
        let tile = kb.var(self.reduction / steps);
        let (n, l, r) = (kb.var(self.rows), kb.var(TILE_LANES), kb.var(steps));
        let step_at = ix(tile) * steps as i64 + ix(r);
        let at = vec![ix(n), lane_at(l)];
        let nest = Contraction {
            rows: Some((n, false)),
            lanes: l,
            reductions: vec![r],
            init: self.out.load(&at),
            a: (self.a)(ix(n), step_at.clone()),
            b: (self.b)(step_at, lane_at(l)),
            out: self.out.clone(),
            at,
        };
        let nest = kb.contraction(nest, |acc| acc);
        body.push(kb.for_(tile, vec![nest]));
        if let Some(act) = self.epilogue {
            let (n, l) = (kb.var(self.rows), kb.var(TILE_LANES));
            let at = [ix(n), lane_at(l)];
            let apply = self
                .out
                .store(&at, activation::fused(Some(act), self.out.load(&at)));
            body.push(kb.for_(n, vec![kb.for_(l, vec![apply])]));
        }
        let top = kb.parallel_for(block, body);
        Some(kb.finish(vec![top]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::ParamId;
    use crate::lower::interp::run;
    use crate::lower::loops::BufId;

    /// Runs the forward and backward kernels on two samples, three features, two units with
    /// `dy = [[1, 2], [3, 4]]` and `dx` starting at 1; returns `y, dx, dW, db`.
    fn run_by_hand(bias: [f32; 2], epilogue: Option<Activation>) -> [Vec<f32>; 4] {
        let dense = Dense {
            in_features: 3,
            units: 2,
            weight: ParamId(0),
            bias: Some(ParamId(1)),
        };
        let dims: [&[usize]; 8] = [
            &[2, 3],
            &[2, 3],
            &[2],
            &[2, 2],
            &[2, 2],
            &[2, 3],
            &[2, 3],
            &[2],
        ];
        let [x, w, b, y, dy, dx, dw, db] =
            std::array::from_fn(|i| Tensor::new(BufId(i as u32), dims[i].to_vec()));
        let mut bufs = vec![
            vec![1., 2., 3., 4., 5., 6.],
            vec![1., 0., -1., 2., 1., 0.],
            bias.to_vec(),
            vec![0.; 4],
            vec![1., 2., 3., 4.],
            vec![1.; 6],
            vec![0.; 6],
            vec![0.; 2],
        ];
        let specs = scratch(&dense, &x, true, epilogue);
        let first = bufs.len() as u32;
        bufs.extend(specs.iter().map(|s| vec![0.0; s.dims.iter().product()]));
        let scratch = Scratch::numbered(first, &specs);
        let t = DenseTensors {
            x: &x,
            weight: &w,
            bias: Some(&b),
            y: &y,
            scratch: &scratch,
        };
        let kernels = [
            forward("d", &dense, &t, epilogue),
            backward("d", &dense, &t, &dy, Some(&dx), &dw, Some(&db), epilogue),
        ];
        for k in kernels.iter().flatten() {
            run(k, &mut bufs).unwrap();
        }
        [3, 5, 6, 7].map(|i| bufs[i].clone())
    }

    /// Every value is a small integer, so the results are exact.
    #[test]
    fn forward_and_backward_by_hand() {
        let [y, dx, dw, db] = run_by_hand([10., 20.], None);
        assert_eq!(y, vec![8., 24., 8., 33.]);
        // dx = 1 + dy W: rows [1·(1,0,−1) + 2·(2,1,0)], [3·(1,0,−1) + 4·(2,1,0)].
        assert_eq!(dx, vec![6., 3., 0., 12., 5., -2.]);
        // dW = dyᵀ x.
        assert_eq!(dw, vec![13., 17., 21., 18., 24., 30.]);
        assert_eq!(db, vec![4., 6.]);
    }

    /// With a fused relu, unit 0 is negative for both samples: it gets no gradient.
    #[test]
    fn fused_relu_by_hand() {
        let [y, dx, dw, db] = run_by_hand([-10., 20.], Some(Activation::Relu));
        assert_eq!(y, vec![0., 24., 0., 33.]);
        // dz = [[0, 2], [0, 4]]; dx = 1 + dz W.
        assert_eq!(dx, vec![5., 3., 1., 9., 5., 1.]);
        assert_eq!(dw, vec![0., 0., 0., 18., 24., 30.]);
        assert_eq!(db, vec![0., 6.]);
    }
}
