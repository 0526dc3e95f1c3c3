//! Branch joins: `concat` (along the channel axis, in input order) and `add` (element-wise).
//! Flatten and identity need no kernel: the plan gives them their input's buffers.
//! `add` applies a fused activation (`epilogue`, see `passes::fuse`) in its store, and its
//! backward forms `dy·act'(y)` once per element before fanning it out.

use super::activation::{apply, through_epilogue};
use super::builder::{ix, local, set, KernelBuilder, Tensor};
use super::loops::{Expr, Kernel};
use crate::ir::Activation;

/// `y[n, offset_i + c, p] = x_i[n, c, p]`, parallel over the batch.
pub fn concat_forward(name: &str, xs: &[&Tensor], y: &Tensor) -> Kernel {
    let y = y.channels_view();
    let mut kb = KernelBuilder::new(format!("{name}.forward"));
    let n = kb.var(y.dims[0]);
    let mut body = Vec::new();
    let mut offset = 0i64;
    for x in xs {
        let x = x.channels_view();
        let (c, p) = (kb.var(x.dims[1]), kb.var(x.dims[2]));
        let copy = y.store(
            &[ix(n), ix(c) + offset, ix(p)],
            x.load(&[ix(n), ix(c), ix(p)]),
        );
        body.push(kb.for_(c, vec![kb.for_(p, vec![copy])]));
        offset += x.dims[1] as i64;
    }
    let top = kb.parallel_for(n, body);
    kb.finish(vec![top])
}

/// `dx_i[n, c, p] += dy[n, offset_i + c, p]` for each input that needs a gradient (`None`
/// entries are skipped but still take their channels), parallel over the batch.
pub fn concat_backward(name: &str, xs: &[&Tensor], dy: &Tensor, dxs: &[Option<&Tensor>]) -> Kernel {
    let dy = dy.channels_view();
    let mut kb = KernelBuilder::new(format!("{name}.backward_input"));
    let n = kb.var(dy.dims[0]);
    let mut body = Vec::new();
    let mut offset = 0i64;
    for (x, dx) in xs.iter().zip(dxs) {
        let x = x.channels_view();
        if let Some(dx) = dx {
            let dx = dx.channels_view();
            let (c, p) = (kb.var(x.dims[1]), kb.var(x.dims[2]));
            let add = dx.accumulate(
                &[ix(n), ix(c), ix(p)],
                dy.load(&[ix(n), ix(c) + offset, ix(p)]),
            );
            body.push(kb.for_(c, vec![kb.for_(p, vec![add])]));
        }
        offset += x.dims[1] as i64;
    }
    let top = kb.parallel_for(n, body);
    kb.finish(vec![top])
}

/// `y = act(Σ_i x_i)` (`Σ_i x_i` without an epilogue), left to right, parallel over the batch.
pub fn add_forward(name: &str, xs: &[&Tensor], y: &Tensor, epilogue: Option<Activation>) -> Kernel {
    let y = y.rows();
    let mut kb = KernelBuilder::new(format!("{name}.forward"));
    let (n, e) = (kb.var(y.dims[0]), kb.var(y.dims[1]));
    let at = [ix(n), ix(e)];
    let sum = xs
        .iter()
        .map(|x| x.rows().load(&at))
        .reduce(|a, b| a + b)
        .unwrap_or(Expr::Const(0.0));
    let sum = match epilogue {
        Some(act) => apply(act, sum),
        None => sum,
    };
    let top = kb.parallel_for(n, vec![kb.for_(e, vec![y.store(&at, sum)])]);
    kb.finish(vec![top])
}

/// `dx_i += dy` for each input that needs a gradient (`dy·act'(y)` with an epilogue), parallel
/// over the batch.
pub fn add_backward(
    name: &str,
    y: &Tensor,
    dy: &Tensor,
    dxs: &[Option<&Tensor>],
    epilogue: Option<Activation>,
) -> Kernel {
    let (y, dy) = (y.rows(), dy.rows());
    let mut kb = KernelBuilder::new(format!("{name}.backward_input"));
    let (n, e) = (kb.var(dy.dims[0]), kb.var(dy.dims[1]));
    let g = kb.local();
    let at = [ix(n), ix(e)];
    let gradient = set(g, through_epilogue(epilogue, y.load(&at), dy.load(&at)));
    let adds = std::iter::once(gradient)
        .chain(
            dxs.iter()
                .flatten()
                .map(|dx| dx.rows().accumulate(&at, local(g))),
        )
        .collect();
    let top = kb.parallel_for(n, vec![kb.for_(e, adds)]);
    kb.finish(vec![top])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lower::interp::run;
    use crate::lower::loops::BufId;

    /// Batch 2: a [1, 2] part and a [2, 2] part make [3, 2] per sample.
    #[test]
    fn concat_interleaves_per_sample_and_splits_back() {
        let a = Tensor::new(BufId(0), vec![2, 1, 2]);
        let b = Tensor::new(BufId(1), vec![2, 2, 2]);
        let y = Tensor::new(BufId(2), vec![2, 3, 2]);
        let da = Tensor::new(BufId(3), vec![2, 1, 2]);
        let mut bufs = vec![
            vec![1., 2., 3., 4.],
            vec![10., 11., 12., 13., 14., 15., 16., 17.],
            vec![0.; 12],
            vec![0.; 4],
        ];
        run(&concat_forward("cat", &[&a, &b], &y), &mut bufs).unwrap();
        assert_eq!(
            bufs[2],
            vec![1., 2., 10., 11., 12., 13., 3., 4., 14., 15., 16., 17.]
        );
        run(
            &concat_backward("cat", &[&a, &b], &y, &[Some(&da), None]),
            &mut bufs,
        )
        .unwrap();
        assert_eq!(bufs[3], vec![1., 2., 3., 4.]);
    }

    /// The same input twice (a residual `add` of identities) gets the gradient twice.
    #[test]
    fn add_sums_forward_and_fans_out_backward() {
        let x = Tensor::new(BufId(0), vec![1, 3]);
        let y = Tensor::new(BufId(1), vec![1, 3]);
        let dx = Tensor::new(BufId(2), vec![1, 3]);
        let mut bufs = vec![vec![1., 2., 3.], vec![0.; 3], vec![0.; 3]];
        run(&add_forward("add", &[&x, &x], &y, None), &mut bufs).unwrap();
        assert_eq!(bufs[1], vec![2., 4., 6.]);
        run(
            &add_backward("add", &y, &y, &[Some(&dx), Some(&dx)], None),
            &mut bufs,
        )
        .unwrap();
        assert_eq!(bufs[2], vec![4., 8., 12.]);
    }
}
