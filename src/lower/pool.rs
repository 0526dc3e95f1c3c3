//! Max and average pooling over any number of spatial axes (`nn.MaxPoolNd`, `nn.AvgPoolNd`,
//! floor mode), and global average pooling.
//!
//! Max pooling skips padded positions, which is padding with −∞; its gradient goes to the
//! first maximum of each window in row-major order, found again in the backward kernel with
//! locals (strict `>` keeps the first). Average pooling divides by the whole window size,
//! padding included (`count_include_pad=True`); with floor mode and padding at most half the
//! kernel, no window reaches past the padding, so that size is `ΠK` for every window.

use super::builder::{
    cmp, cst, ix, ixs, local, select, set, window_offset, window_positions, KernelBuilder, Tensor,
};
use super::loops::{CmpOp, Expr, Index, Kernel, Stmt, Var};
use crate::ir::{Pool, PoolKind};

/// The loop variables of one pooling kernel: `n, c, *o, *k`, and the window guards.
struct Window {
    n: Var,
    c: Var,
    out: Vec<Var>,
    k: Vec<Var>,
    positions: Vec<Index>,
    bounds: Vec<(Index, usize)>,
}

impl Window {
    fn new(kb: &mut KernelBuilder, pool: &Pool, x: &Tensor, y: &Tensor) -> Window {
        let n = kb.var(x.dims[0]);
        let c = kb.var(x.dims[1]);
        let out = kb.vars(&y.dims[2..]);
        let k = kb.vars(&pool.kernel);
        let dilation = vec![1; pool.kernel.len()];
        let positions = window_positions(&out, &k, &pool.stride, &dilation, &pool.padding);
        let bounds = positions
            .iter()
            .cloned()
            .zip(x.dims[2..].iter().copied())
            .collect();
        Window {
            n,
            c,
            out,
            k,
            positions,
            bounds,
        }
    }

    fn x_at(&self) -> Vec<Index> {
        [vec![ix(self.n), ix(self.c)], self.positions.clone()].concat()
    }

    fn y_at(&self) -> Vec<Index> {
        [vec![ix(self.n), ix(self.c)], ixs(&self.out)].concat()
    }

    /// `per_output` inside the loops over `n` (parallel), `c` and the output positions.
    fn around_outputs(&self, kb: &KernelBuilder, per_output: Vec<Stmt>) -> Stmt {
        let inner = kb.for_(self.c, kb.nest(&self.out, per_output));
        kb.parallel_for(self.n, vec![inner])
    }
}

/// `y[n, c, o]` = max or mean of the window of `x` at `o`, parallel over the batch.
pub fn forward(name: &str, pool: &Pool, x: &Tensor, y: &Tensor) -> Kernel {
    let mut kb = KernelBuilder::new(format!("{name}.forward"));
    let w = Window::new(&mut kb, pool, x, y);
    let acc = kb.local();
    let value = x.load(&w.x_at());
    let (start, step, finish) = match pool.kind {
        PoolKind::Max => (
            cst(f32::NEG_INFINITY),
            super::builder::max(local(acc), value),
            local(acc),
        ),
        PoolKind::Avg => (
            cst(0.0),
            local(acc) + value,
            local(acc) / cst(pool.kernel.iter().product::<usize>() as f32),
        ),
    };
    let scan = kb.nest(&w.k, kb.guarded(&w.bounds, vec![set(acc, step)]));
    let per_output = [
        vec![set(acc, start)],
        scan,
        vec![y.store(&w.y_at(), finish)],
    ]
    .concat();
    let top = w.around_outputs(&kb, per_output);
    kb.finish(vec![top])
}

/// `dx += ∂y/∂x · dy`, accumulating (the plan zeroes `dx`), parallel over the batch.
pub fn backward(
    name: &str,
    pool: &Pool,
    x: &Tensor,
    y: &Tensor,
    dy: &Tensor,
    dx: &Tensor,
) -> Kernel {
    let mut kb = KernelBuilder::new(format!("{name}.backward_input"));
    let w = Window::new(&mut kb, pool, x, y);
    let gradient = dy.load(&w.y_at());
    let per_output = match pool.kind {
        PoolKind::Max => {
            let (best, first_best, value) = (kb.local(), kb.local(), kb.local());
            let offset = Expr::IndexValue(window_offset(&w.k, &pool.kernel));
            let better = || cmp(CmpOp::Gt, local(value), local(best));
            let find = vec![
                set(value, x.load(&w.x_at())),
                set(
                    first_best,
                    select(better(), offset.clone(), local(first_best)),
                ),
                set(best, select(better(), local(value), local(best))),
            ];
            let send = Stmt::If(
                cmp(CmpOp::Eq, offset, local(first_best)),
                vec![dx.accumulate(&w.x_at(), gradient)],
            );
            [
                vec![
                    set(best, cst(f32::NEG_INFINITY)),
                    set(first_best, cst(-1.0)),
                ],
                kb.nest(&w.k, kb.guarded(&w.bounds, find)),
                kb.nest(&w.k, kb.guarded(&w.bounds, vec![send])),
            ]
            .concat()
        }
        PoolKind::Avg => {
            let size = cst(pool.kernel.iter().product::<usize>() as f32);
            let spread = dx.accumulate(&w.x_at(), gradient / size);
            kb.nest(&w.k, kb.guarded(&w.bounds, vec![spread]))
        }
    };
    let top = w.around_outputs(&kb, per_output);
    kb.finish(vec![top])
}

/// `y[n, c] = mean_p x[n, c, p]` over all spatial positions, parallel over the batch.
pub fn global_avg_forward(name: &str, x: &Tensor, y: &Tensor) -> Kernel {
    let x = x.channels_view();
    let (batch, channels, positions) = (x.dims[0], x.dims[1], x.dims[2]);
    let mut kb = KernelBuilder::new(format!("{name}.forward"));
    let (n, c, p) = (kb.var(batch), kb.var(channels), kb.var(positions));
    let acc = kb.local();
    let per_channel = vec![
        set(acc, cst(0.0)),
        kb.for_(
            p,
            vec![set(acc, local(acc) + x.load(&[ix(n), ix(c), ix(p)]))],
        ),
        y.store(&[ix(n), ix(c)], local(acc) / cst(positions as f32)),
    ];
    let top = kb.parallel_for(n, vec![kb.for_(c, per_channel)]);
    kb.finish(vec![top])
}

/// `dx[n, c, p] += dy[n, c] / P`, parallel over the batch.
pub fn global_avg_backward(name: &str, dy: &Tensor, dx: &Tensor) -> Kernel {
    let dx = dx.channels_view();
    let (batch, channels, positions) = (dx.dims[0], dx.dims[1], dx.dims[2]);
    let mut kb = KernelBuilder::new(format!("{name}.backward_input"));
    let (n, c, p) = (kb.var(batch), kb.var(channels), kb.var(positions));
    let spread = dx.accumulate(
        &[ix(n), ix(c), ix(p)],
        dy.load(&[ix(n), ix(c)]) / cst(positions as f32),
    );
    let top = kb.parallel_for(n, vec![kb.for_(c, vec![kb.for_(p, vec![spread])])]);
    kb.finish(vec![top])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lower::interp::run;
    use crate::lower::loops::BufId;

    fn pool2d(kind: PoolKind, k: usize, stride: usize, pad: usize) -> Pool {
        Pool {
            kind,
            kernel: vec![k, k],
            stride: vec![stride, stride],
            padding: vec![pad, pad],
        }
    }

    const X: [f32; 9] = [0., 1., 2., 3., 4., 5., 6., 7., 8.];

    fn run_forward(pool: &Pool, input: &[f32], side: usize, out: usize) -> Vec<f32> {
        let x = Tensor::new(BufId(0), vec![1, 1, side, side]);
        let y = Tensor::new(BufId(1), vec![1, 1, out, out]);
        let mut bufs = vec![input.to_vec(), vec![0.; out * out]];
        run(&forward("p", pool, &x, &y), &mut bufs).unwrap();
        bufs.swap_remove(1)
    }

    #[test]
    fn seed_max_and_avg_pooling() {
        let max = run_forward(&pool2d(PoolKind::Max, 2, 1, 0), &X, 3, 2);
        assert_eq!(max, vec![4., 5., 7., 8.]);
        let avg = run_forward(&pool2d(PoolKind::Avg, 2, 1, 0), &X, 3, 2);
        assert_eq!(avg, vec![2., 3., 5., 6.]);
    }

    /// Padding 1, kernel 2, stride 2 on a 2×2 input of negatives: max ignores the padding
    /// (−∞), average counts it as zeros in a window of 4.
    #[test]
    fn padding_is_minus_infinity_for_max_and_zero_for_avg() {
        let x = [-1., -2., -3., -4.];
        let max = run_forward(&pool2d(PoolKind::Max, 2, 2, 1), &x, 2, 2);
        assert_eq!(max, x.to_vec());
        let avg = run_forward(&pool2d(PoolKind::Avg, 2, 2, 1), &x, 2, 2);
        assert_eq!(avg, vec![-0.25, -0.5, -0.75, -1.]);
    }

    /// A window of equal values sends its gradient to the first one only; overlapping windows
    /// accumulate.
    #[test]
    fn max_backward_picks_the_first_maximum() {
        let pool = pool2d(PoolKind::Max, 2, 1, 0);
        let x = Tensor::new(BufId(0), vec![1, 1, 3, 3]);
        let y = Tensor::new(BufId(1), vec![1, 1, 2, 2]);
        let dy = Tensor::new(BufId(2), vec![1, 1, 2, 2]);
        let dx = Tensor::new(BufId(3), vec![1, 1, 3, 3]);
        let mut bufs = vec![vec![1.; 9], vec![0.; 4], vec![1., 2., 3., 4.], vec![0.; 9]];
        run(&backward("p", &pool, &x, &y, &dy, &dx), &mut bufs).unwrap();
        assert_eq!(bufs[3], vec![1., 2., 0., 3., 4., 0., 0., 0., 0.]);
        bufs[0] = X.to_vec();
        bufs[3] = vec![0.; 9];
        run(&backward("p", &pool, &x, &y, &dy, &dx), &mut bufs).unwrap();
        assert_eq!(bufs[3], vec![0., 0., 0., 0., 1., 2., 0., 3., 4.]);
    }

    #[test]
    fn avg_backward_spreads_evenly() {
        let pool = pool2d(PoolKind::Avg, 2, 1, 0);
        let x = Tensor::new(BufId(0), vec![1, 1, 3, 3]);
        let y = Tensor::new(BufId(1), vec![1, 1, 2, 2]);
        let dy = Tensor::new(BufId(2), vec![1, 1, 2, 2]);
        let dx = Tensor::new(BufId(3), vec![1, 1, 3, 3]);
        let mut bufs = vec![X.to_vec(), vec![0.; 4], vec![4.; 4], vec![0.; 9]];
        run(&backward("p", &pool, &x, &y, &dy, &dx), &mut bufs).unwrap();
        assert_eq!(bufs[3], vec![1., 2., 1., 2., 4., 2., 1., 2., 1.]);
    }

    #[test]
    fn global_average_forward_and_backward() {
        let x = Tensor::new(BufId(0), vec![1, 2, 2, 2]);
        let y = Tensor::new(BufId(1), vec![1, 2]);
        let mut bufs = vec![(0..8).map(|v| v as f32).collect(), vec![0.; 2], vec![8.; 8]];
        run(&global_avg_forward("g", &x, &y), &mut bufs).unwrap();
        assert_eq!(bufs[1], vec![1.5, 5.5]);
        let dx = Tensor::new(BufId(2), vec![1, 2, 2, 2]);
        bufs[1] = vec![4., -8.];
        run(&global_avg_backward("g", &y, &dx), &mut bufs).unwrap();
        assert_eq!(bufs[2], vec![9., 9., 9., 9., 6., 6., 6., 6.]);
    }
}
