//! Fully connected layer (`nn.Linear`): `y = x Wᵀ + b` with `x [N, F]`, `W [U, F]`, `y [N, U]`.

use super::builder::{cst, fma, ix, local, set, KernelBuilder, Tensor};
use super::loops::Kernel;
use crate::ir::Dense;

/// The tensors of one dense layer; `x` is viewed as `[N, F]` whatever its shape (flatten aliases).
pub struct DenseTensors<'a> {
    pub x: &'a Tensor,
    pub weight: &'a Tensor,
    pub bias: Option<&'a Tensor>,
    pub y: &'a Tensor,
}

/// `y[n, u] = b[u] + Σ_f x[n, f] · W[u, f]`, parallel over the batch.
pub fn forward(name: &str, dense: &Dense, t: &DenseTensors) -> Kernel {
    let x = t.x.rows();
    let mut kb = KernelBuilder::new(format!("{name}.forward"));
    let (n, u, f) = (
        kb.var(x.dims[0]),
        kb.var(dense.units),
        kb.var(dense.in_features),
    );
    let acc = kb.local();
    let start = t.bias.map_or(cst(0.0), |b| b.load(&[ix(u)]));
    let per_unit = vec![
        set(acc, start),
        kb.for_(
            f,
            vec![set(
                acc,
                fma(
                    x.load(&[ix(n), ix(f)]),
                    t.weight.load(&[ix(u), ix(f)]),
                    local(acc),
                ),
            )],
        ),
        t.y.store(&[ix(n), ix(u)], local(acc)),
    ];
    let top = kb.parallel_for(n, vec![kb.for_(u, per_unit)]);
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

/// `dx[n, f] += Σ_u dy[n, u] · W[u, f]`, parallel over the batch.
fn backward_input(name: &str, dense: &Dense, t: &DenseTensors, dy: &Tensor, dx: &Tensor) -> Kernel {
    let dx = dx.rows();
    let mut kb = KernelBuilder::new(format!("{name}.backward_input"));
    let (n, f, u) = (
        kb.var(dx.dims[0]),
        kb.var(dense.in_features),
        kb.var(dense.units),
    );
    let acc = kb.local();
    let per_feature = vec![
        set(acc, cst(0.0)),
        kb.for_(
            u,
            vec![set(
                acc,
                fma(
                    dy.load(&[ix(n), ix(u)]),
                    t.weight.load(&[ix(u), ix(f)]),
                    local(acc),
                ),
            )],
        ),
        dx.accumulate(&[ix(n), ix(f)], local(acc)),
    ];
    let top = kb.parallel_for(n, vec![kb.for_(f, per_feature)]);
    kb.finish(vec![top])
}

/// `dW[u, f] = Σ_n dy[n, u] · x[n, f]`, parallel over units, the batch summed in order inside.
fn backward_weight(
    name: &str,
    dense: &Dense,
    t: &DenseTensors,
    dy: &Tensor,
    dw: &Tensor,
) -> Kernel {
    let x = t.x.rows();
    let mut kb = KernelBuilder::new(format!("{name}.backward_weight"));
    let (u, f, n) = (
        kb.var(dense.units),
        kb.var(dense.in_features),
        kb.var(x.dims[0]),
    );
    let acc = kb.local();
    let per_weight = vec![
        set(acc, cst(0.0)),
        kb.for_(
            n,
            vec![set(
                acc,
                fma(
                    dy.load(&[ix(n), ix(u)]),
                    x.load(&[ix(n), ix(f)]),
                    local(acc),
                ),
            )],
        ),
        dw.store(&[ix(u), ix(f)], local(acc)),
    ];
    let top = kb.parallel_for(u, vec![kb.for_(f, per_weight)]);
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
