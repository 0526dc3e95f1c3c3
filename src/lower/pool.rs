//! Max and average pooling over any number of spatial axes (`nn.MaxPoolNd`, `nn.AvgPoolNd`,
//! floor mode), and global average pooling.
//!
//! Max pooling skips padded positions, which is padding with −∞; its gradient goes to the
//! first maximum of each window in row-major order, found again in the backward kernel with
//! locals (strict `>` keeps the first). Average pooling divides by the whole window size,
//! padding included (`count_include_pad=True`); with floor mode and padding at most half the
//! kernel, no window reaches past the padding, so that size is `ΠK` for every window.
//!
//! Without padding (no window needs a bounds guard) and with at most [`MAX_UNROLLED`] window
//! positions, the window is unrolled: the loops run over the output positions only, the last
//! output axis innermost, and the body is straight-line code over the window's positions,
//! which the JIT vectorises along that axis (`jit/vector.rs`: loads `stride` apart are
//! gathered, and the backward's stores scattered). The unrolled bodies compute every element
//! with the operations of the looped form in the same order (`0 + x₀ + x₁ …`, `max(−∞, x₀) …`,
//! the same selects for the first maximum, each `dx` element's contributions in the same
//! order), so the results are bitwise those of the looped form, which stays for padded
//! windows. The backward's stores vectorise only where no two outputs of a vector share an
//! input element (the stride covers the window along the last axis, `jit/vector.rs` checks
//! it); overlapping windows run the unrolled body one output at a time, in the looped order.

use super::builder::{
    cmp, cst, ix, ixs, local, select, set, window_offset, window_positions, KernelBuilder, Tensor,
};
use super::loops::{CmpOp, Expr, Index, Kernel, Stmt, Var};
use crate::ir::{Pool, PoolKind};

/// The most window positions an unrolled body covers (`3×3×3` fits); larger windows keep
/// their loops.
pub const MAX_UNROLLED: usize = 32;

/// The loop variables of one pooling kernel: `n, c, *o`, and for the looped form `*k` and the
/// window guards.
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

    /// The variables of the unrolled form: no window loops, no guards.
    fn unrolled(kb: &mut KernelBuilder, x: &Tensor, y: &Tensor) -> Window {
        let n = kb.var(x.dims[0]);
        let c = kb.var(x.dims[1]);
        let out = kb.vars(&y.dims[2..]);
        Window {
            n,
            c,
            out,
            k: Vec::new(),
            positions: Vec::new(),
            bounds: Vec::new(),
        }
    }

    fn x_at(&self) -> Vec<Index> {
        [vec![ix(self.n), ix(self.c)], self.positions.clone()].concat()
    }

    /// The element of `x` at window position `cell` (one coordinate per spatial axis) of the
    /// output at `o`, for an unpadded pooling.
    fn x_at_cell(&self, pool: &Pool, cell: &[usize]) -> Vec<Index> {
        let spatial =
            (0..self.out.len()).map(|d| ix(self.out[d]) * pool.stride[d] as i64 + cell[d] as i64);
        [ix(self.n), ix(self.c)]
            .into_iter()
            .chain(spatial)
            .collect()
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

/// The window positions of `pool` in row-major order, when its windows are unrolled: no
/// padding, every window inside `x` (so no guard), at most [`MAX_UNROLLED`] positions and at
/// least one spatial axis.
fn unrolled_cells(pool: &Pool, x: &Tensor, y: &Tensor) -> Option<Vec<Vec<usize>>> {
    let size: usize = pool.kernel.iter().product();
    let inside = (0..pool.kernel.len()).all(|d| {
        let out = y.dims[2 + d];
        pool.padding[d] == 0
            && (out == 0 || (out - 1) * pool.stride[d] + pool.kernel[d] <= x.dims[2 + d])
    });
    if !inside || size > MAX_UNROLLED || pool.kernel.is_empty() {
        return None;
    }
    let cells = (0..size)
        .map(|mut linear| {
            let mut cell = vec![0; pool.kernel.len()];
            for d in (0..pool.kernel.len()).rev() {
                cell[d] = linear % pool.kernel[d];
                linear /= pool.kernel[d];
            }
            cell
        })
        .collect();
    Some(cells)
}

/// `y[n, c, o]` = max or mean of the window of `x` at `o`, parallel over the batch.
pub fn forward(name: &str, pool: &Pool, x: &Tensor, y: &Tensor) -> Kernel {
    forward_kernel(name, pool, x, y, Form::Unrolled)
}

/// Whether a kernel unrolls its windows where it can ([`unrolled_cells`]) or keeps every
/// window's loops (what tests compare the unrolled form with).
#[derive(Clone, Copy, PartialEq)]
enum Form {
    Unrolled,
    /// What the unit tests compare the unrolled kernels with.
    #[cfg(test)]
    Looped,
}

fn forward_kernel(name: &str, pool: &Pool, x: &Tensor, y: &Tensor, form: Form) -> Kernel {
    let mut kb = KernelBuilder::new(format!("{name}.forward"));
    let cells = (form == Form::Unrolled)
        .then(|| unrolled_cells(pool, x, y))
        .flatten();
    if let Some(cells) = cells {
        let w = Window::unrolled(&mut kb, x, y);
        // The looped form's `acc = start; acc = step(acc, x)…; finish(acc)`, as one expression.
        let start = match pool.kind {
            PoolKind::Max => cst(f32::NEG_INFINITY),
            PoolKind::Avg => cst(0.0),
        };
        let sum = cells.iter().fold(start, |acc, cell| {
            let value = x.load(&w.x_at_cell(pool, cell));
            match pool.kind {
                PoolKind::Max => super::builder::max(acc, value),
                PoolKind::Avg => acc + value,
            }
        });
        let finish = match pool.kind {
            PoolKind::Max => sum,
            PoolKind::Avg => sum / cst(cells.len() as f32),
        };
        let top = w.around_outputs(&kb, vec![y.store(&w.y_at(), finish)]);
        return kb.finish(vec![top]);
    }
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
    backward_kernel(name, pool, [x, y, dy, dx], Form::Unrolled)
}

fn backward_kernel(name: &str, pool: &Pool, tensors: [&Tensor; 4], form: Form) -> Kernel {
    let [x, y, dy, dx] = tensors;
    let mut kb = KernelBuilder::new(format!("{name}.backward_input"));
    let cells = (form == Form::Unrolled)
        .then(|| unrolled_cells(pool, x, y))
        .flatten();
    if let Some(cells) = cells {
        let w = Window::unrolled(&mut kb, x, y);
        let per_output = match pool.kind {
            PoolKind::Max => unrolled_max_backward(&mut kb, pool, &w, &cells, x, dy, dx),
            PoolKind::Avg => {
                // `dy / ΠK` once per output: the value the looped form adds at each position.
                let share = kb.local();
                let size = cst(cells.len() as f32);
                let spread = cells
                    .iter()
                    .map(|cell| dx.accumulate(&w.x_at_cell(pool, cell), local(share)));
                [set(share, dy.load(&w.y_at()) / size)]
                    .into_iter()
                    .chain(spread)
                    .collect()
            }
        };
        let top = w.around_outputs(&kb, per_output);
        return kb.finish(vec![top]);
    }
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

/// The looped max backward with its window unrolled: the same selects find the first maximum
/// (its row-major offset in the window), then every position `p` stores
/// `p == first ? dx + dy : dx`, which is the looped form's `if p == first { dx += dy }` as
/// straight-line code (a select, which the JIT vectorises, where an `If` would not be).
fn unrolled_max_backward(
    kb: &mut KernelBuilder,
    pool: &Pool,
    w: &Window,
    cells: &[Vec<usize>],
    x: &Tensor,
    dy: &Tensor,
    dx: &Tensor,
) -> Vec<Stmt> {
    let (best, first_best, value) = (kb.local(), kb.local(), kb.local());
    let better = || cmp(CmpOp::Gt, local(value), local(best));
    let mut body = vec![
        set(best, cst(f32::NEG_INFINITY)),
        set(first_best, cst(-1.0)),
    ];
    for (offset, cell) in cells.iter().enumerate() {
        body.extend([
            set(value, x.load(&w.x_at_cell(pool, cell))),
            set(
                first_best,
                select(better(), cst(offset as f32), local(first_best)),
            ),
            set(best, select(better(), local(value), local(best))),
        ]);
    }
    for (offset, cell) in cells.iter().enumerate() {
        let at = w.x_at_cell(pool, cell);
        let is_first = cmp(CmpOp::Eq, cst(offset as f32), local(first_best));
        let sent = dx.load(&at) + dy.load(&w.y_at());
        body.push(dx.store(&at, select(is_first, sent, dx.load(&at))));
    }
    body
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

    /// The unrolled kernels compute bitwise what the looped ones do, on inputs with ties,
    /// signed zeros and infinities, for 1-D to 3-D windows that overlap or not; padded windows
    /// are not unrolled.
    #[test]
    fn unrolled_windows_are_bitwise_the_looped_form() {
        let axes: [&[(usize, usize, usize)]; 7] = [
            &[(2, 2, 9)],
            &[(3, 1, 8)],
            &[(2, 3, 11)],
            &[(2, 2, 6), (2, 2, 7)],
            &[(3, 2, 7), (2, 1, 5)],
            &[(2, 2, 4), (1, 1, 3), (3, 3, 9)],
            &[(4, 4, 8), (4, 4, 8)],
        ];
        let specials = [0.0, -0.0, 1.0, -1.0, 2.5, f32::INFINITY, f32::NEG_INFINITY];
        let mut state = 7u64;
        for (case, axes) in axes.iter().enumerate() {
            for kind in [PoolKind::Max, PoolKind::Avg] {
                let pool = Pool {
                    kind,
                    kernel: axes.iter().map(|a| a.0).collect(),
                    stride: axes.iter().map(|a| a.1).collect(),
                    padding: vec![0; axes.len()],
                };
                let out = axes.iter().map(|&(k, s, i)| (i - k) / s + 1);
                let x_dims = [vec![2, 2], axes.iter().map(|a| a.2).collect()].concat();
                let y_dims = [vec![2, 2], out.collect()].concat();
                let x = Tensor::new(BufId(0), x_dims);
                let y = Tensor::new(BufId(1), y_dims.clone());
                let dy = Tensor::new(BufId(2), y_dims);
                let dx = Tensor::new(BufId(3), x.dims.clone());
                let mut random = |len: usize| -> Vec<f32> {
                    (0..len)
                        .map(|_| {
                            state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                            specials[(state >> 33) as usize % specials.len()]
                        })
                        .collect()
                };
                let mut bufs = vec![
                    random(x.numel()),
                    random(y.numel()),
                    random(dy.numel()),
                    random(dx.numel()),
                ];
                // Max pooling inputs are never NaN (`lower::loops`), nor is an average of
                // finite values: keep infinities out of the average's input.
                if kind == PoolKind::Avg {
                    bufs[0].iter_mut().for_each(|v| *v = v.clamp(-3.0, 3.0));
                }
                let unrolled = [
                    forward_kernel("p", &pool, &x, &y, Form::Unrolled),
                    backward_kernel("p", &pool, [&x, &y, &dy, &dx], Form::Unrolled),
                ];
                let looped = [
                    forward_kernel("p", &pool, &x, &y, Form::Looped),
                    backward_kernel("p", &pool, [&x, &y, &dy, &dx], Form::Looped),
                ];
                assert_ne!(unrolled, looped, "case {case} was not unrolled");
                let mut runs = [bufs.clone(), bufs];
                for (kernels, bufs) in [unrolled, looped].iter().zip(&mut runs) {
                    for kernel in kernels {
                        run(kernel, bufs).unwrap();
                    }
                }
                let bits = |b: &Vec<Vec<f32>>| -> Vec<Vec<u32>> {
                    b.iter()
                        .map(|v| v.iter().map(|f| f.to_bits()).collect())
                        .collect()
                };
                assert_eq!(bits(&runs[0]), bits(&runs[1]), "case {case}, {kind:?}");
            }
        }
        let padded = pool2d(PoolKind::Avg, 2, 2, 1);
        let x = Tensor::new(BufId(0), vec![1, 1, 4, 4]);
        let y = Tensor::new(BufId(1), vec![1, 1, 3, 3]);
        assert_eq!(
            forward("p", &padded, &x, &y),
            forward_kernel("p", &padded, &x, &y, Form::Looped)
        );
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
