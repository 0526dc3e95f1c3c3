//! Fully connected layer (`nn.Linear`): `y = x Wᵀ + b` with `x [N, F]`, `W [U, F]`, `y [N, U]`.
//!
//! Loop orders for speed: no kernel reduces through a single accumulator in its innermost loop
//! (each FMA would wait for the previous one). The forward keeps [`UNITS_PER_BLOCK`] independent
//! accumulators; the gradients stream along rows of `W`, `x` and `dx`. Every sum still runs over
//! its index in order, so the results do not depend on the blocking or the thread count.

use super::builder::{cst, fma, ix, local, set, KernelBuilder, Tensor};
use super::loops::{Kernel, Local, Stmt};
use crate::ir::Dense;

/// The tensors of one dense layer; `x` is viewed as `[N, F]` whatever its shape (flatten aliases).
pub struct DenseTensors<'a> {
    pub x: &'a Tensor,
    pub weight: &'a Tensor,
    pub bias: Option<&'a Tensor>,
    pub y: &'a Tensor,
}

/// Units whose dot products run side by side in the forward kernel, sharing each `x` load:
/// enough independent FMAs to hide their latency, few enough to stay in registers.
const UNITS_PER_BLOCK: usize = 8;

/// `y[n, u] = b[u] + Σ_f x[n, f] · W[u, f]`, parallel over the batch; units in blocks of
/// [`UNITS_PER_BLOCK`] (then one block of the rest), one accumulator each.
pub fn forward(name: &str, dense: &Dense, t: &DenseTensors) -> Kernel {
    let x = t.x.rows();
    let mut kb = KernelBuilder::new(format!("{name}.forward"));
    let n = kb.var(x.dims[0]);
    let accs: Vec<Local> = (0..UNITS_PER_BLOCK.min(dense.units))
        .map(|_| kb.local())
        .collect();
    let input = kb.local();
    let full_blocks = dense.units / UNITS_PER_BLOCK;
    let blocks = [
        (full_blocks, UNITS_PER_BLOCK, 0),
        (
            1,
            dense.units % UNITS_PER_BLOCK,
            full_blocks * UNITS_PER_BLOCK,
        ),
    ];
    let mut per_sample = Vec::new();
    for (count, width, first) in blocks {
        if count == 0 || width == 0 {
            continue;
        }
        let (block, f) = (kb.var(count), kb.var(dense.in_features));
        let unit = |j: usize| ix(block) * UNITS_PER_BLOCK as i64 + (first + j) as i64;
        let mut body: Vec<Stmt> = (0..width)
            .map(|j| {
                let start = t.bias.map_or(cst(0.0), |b| b.load(&[unit(j)]));
                set(accs[j], start)
            })
            .collect();
        let mut step = vec![set(input, x.load(&[ix(n), ix(f)]))];
        step.extend((0..width).map(|j| {
            let w = t.weight.load(&[unit(j), ix(f)]);
            set(accs[j], fma(local(input), w, local(accs[j])))
        }));
        body.push(kb.for_(f, step));
        body.extend((0..width).map(|j| t.y.store(&[ix(n), unit(j)], local(accs[j]))));
        per_sample.push(kb.for_(block, body));
    }
    let top = kb.parallel_for(n, per_sample);
    kb.finish(vec![top])
}

/// Kernels for `dx` (if the input needs one), `dW` and `db` (if there is a bias).
pub fn backward(
    name: &str,
    dense: &Dense,
    t: &DenseTensors,
    dy: &Tensor,
    dx: Option<&Tensor>,
    dweight: &Tensor,
    dbias: Option<&Tensor>,
) -> Vec<Kernel> {
    let mut kernels: Vec<Kernel> = dx
        .map(|dx| backward_input(name, dense, t, dy, dx))
        .into_iter()
        .collect();
    kernels.push(backward_weight(name, dense, t, dy, dweight));
    kernels.extend(dbias.map(|db| backward_bias(name, dense, dy, db)));
    kernels
}

/// `dx[n, f] += dy[n, u] · W[u, f]` for `u` in order, `f` innermost (a row of `W` and of `dx`),
/// parallel over the batch.
fn backward_input(name: &str, dense: &Dense, t: &DenseTensors, dy: &Tensor, dx: &Tensor) -> Kernel {
    let dx = dx.rows();
    let mut kb = KernelBuilder::new(format!("{name}.backward_input"));
    let (n, u, f) = (
        kb.var(dx.dims[0]),
        kb.var(dense.units),
        kb.var(dense.in_features),
    );
    let gradient = kb.local();
    let dx_at = [ix(n), ix(f)];
    let update = dx.store(
        &dx_at,
        fma(
            local(gradient),
            t.weight.load(&[ix(u), ix(f)]),
            dx.load(&dx_at),
        ),
    );
    let per_unit = vec![
        set(gradient, dy.load(&[ix(n), ix(u)])),
        kb.for_(f, vec![update]),
    ];
    let top = kb.parallel_for(n, vec![kb.for_(u, per_unit)]);
    kb.finish(vec![top])
}

/// `dW[u, f] = Σ_n dy[n, u] · x[n, f]`, parallel over units: the row `dW[u]` is zeroed, then
/// each sample adds `dy[n, u] · x[n]` along it, in batch order.
fn backward_weight(
    name: &str,
    dense: &Dense,
    t: &DenseTensors,
    dy: &Tensor,
    dw: &Tensor,
) -> Kernel {
    let x = t.x.rows();
    let mut kb = KernelBuilder::new(format!("{name}.backward_weight"));
    let (u, clear, n, f) = (
        kb.var(dense.units),
        kb.var(dense.in_features),
        kb.var(x.dims[0]),
        kb.var(dense.in_features),
    );
    let gradient = kb.local();
    let dw_at = [ix(u), ix(f)];
    let update = dw.store(
        &dw_at,
        fma(local(gradient), x.load(&[ix(n), ix(f)]), dw.load(&dw_at)),
    );
    let per_unit = vec![
        kb.for_(clear, vec![dw.store(&[ix(u), ix(clear)], cst(0.0))]),
        kb.for_(
            n,
            vec![
                set(gradient, dy.load(&[ix(n), ix(u)])),
                kb.for_(f, vec![update]),
            ],
        ),
    ];
    let top = kb.parallel_for(u, per_unit);
    kb.finish(vec![top])
}

/// `db[u] = Σ_n dy[n, u]`, parallel over units.
fn backward_bias(name: &str, dense: &Dense, dy: &Tensor, db: &Tensor) -> Kernel {
    let mut kb = KernelBuilder::new(format!("{name}.backward_bias"));
    let (u, n) = (kb.var(dense.units), kb.var(dy.dims[0]));
    let acc = kb.local();
    let body = vec![
        set(acc, cst(0.0)),
        kb.for_(n, vec![set(acc, local(acc) + dy.load(&[ix(n), ix(u)]))]),
        db.store(&[ix(u)], local(acc)),
    ];
    let top = kb.parallel_for(u, body);
    kb.finish(vec![top])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::ParamId;
    use crate::lower::interp::run;
    use crate::lower::loops::BufId;

    /// Two samples, three features, two units; every value is a small integer, so exact.
    #[test]
    fn forward_and_backward_by_hand() {
        let dense = Dense {
            in_features: 3,
            units: 2,
            weight: ParamId(0),
            bias: Some(ParamId(1)),
        };
        let x = Tensor::new(BufId(0), vec![2, 3]);
        let w = Tensor::new(BufId(1), vec![2, 3]);
        let b = Tensor::new(BufId(2), vec![2]);
        let y = Tensor::new(BufId(3), vec![2, 2]);
        let dy = Tensor::new(BufId(4), vec![2, 2]);
        let dx = Tensor::new(BufId(5), vec![2, 3]);
        let dw = Tensor::new(BufId(6), vec![2, 3]);
        let db = Tensor::new(BufId(7), vec![2]);
        let t = DenseTensors {
            x: &x,
            weight: &w,
            bias: Some(&b),
            y: &y,
        };
        let mut bufs = vec![
            vec![1., 2., 3., 4., 5., 6.],
            vec![1., 0., -1., 2., 1., 0.],
            vec![10., 20.],
            vec![0.; 4],
            vec![1., 2., 3., 4.],
            vec![1.; 6],
            vec![0.; 6],
            vec![0.; 2],
        ];
        run(&forward("d", &dense, &t), &mut bufs).unwrap();
        assert_eq!(bufs[3], vec![8., 24., 8., 33.]);
        for k in backward("d", &dense, &t, &dy, Some(&dx), &dw, Some(&db)) {
            run(&k, &mut bufs).unwrap();
        }
        // dx = 1 + dy W: rows [1·(1,0,−1) + 2·(2,1,0)], [3·(1,0,−1) + 4·(2,1,0)].
        assert_eq!(bufs[5], vec![6., 3., 0., 12., 5., -2.]);
        // dW = dyᵀ x.
        assert_eq!(bufs[6], vec![13., 17., 21., 18., 24., 30.]);
        assert_eq!(bufs[7], vec![4., 6.]);
    }
}
