//! Batch normalisation over the channel axis (`nn.BatchNormNd`), in its two modes.
//!
//! Training normalises with the batch statistics (biased variance, two passes for accuracy),
//! saves the mean and `1/√(var + eps)` for the backward pass, and updates the running
//! statistics with `momentum`, the variance unbiased by `M/(M−1)` over the `M = N·ΠS` values of
//! a channel (PyTorch). Inference uses the running statistics. Every kernel runs one channel
//! per iteration of its parallel loop (except inference, which is element-wise over the batch).
//!
//! A fused activation (`epilogue`, see `passes::fuse`) is applied in the stores of `y`; the
//! backward then receives `dy` with respect to the activated `y` and turns it into the gradient
//! of the normalised value (`dy·act'(y)`) where it reads it, without a buffer of its own.

use super::activation::{apply, through_epilogue};
use super::builder::{cst, fma, ix, local, set, sqrt, KernelBuilder, Tensor};
use super::loops::{Expr, Kernel, Var};
use crate::ir::{Activation, BatchNorm};

/// The tensors of one batchnorm layer; `x` and `y` carry the batch axis; the rest are `[C]`.
/// `epilogue` is the fused activation, if any (so `y` holds the activated values).
pub struct NormTensors<'a> {
    pub epilogue: Option<Activation>,
    pub x: &'a Tensor,
    pub y: &'a Tensor,
    pub weight: &'a Tensor,
    pub bias: &'a Tensor,
    pub running_mean: &'a Tensor,
    pub running_var: &'a Tensor,
    /// Batch mean and inverse standard deviation, written in training, read by backward.
    pub saved_mean: &'a Tensor,
    pub saved_invstd: &'a Tensor,
}

/// The per-channel loop variables `c` (parallel), and `n, p` for each pass over the channel.
struct Passes {
    c: Var,
    batch: usize,
    positions: usize,
}

impl Passes {
    fn new(kb: &mut KernelBuilder, x: &Tensor) -> Passes {
        Passes {
            c: kb.var(x.dims[1]),
            batch: x.dims[0],
            positions: x.dims[2],
        }
    }

    /// Loops over every value of the channel with fresh variables: `body(n, p)`.
    fn over_channel(
        &self,
        kb: &mut KernelBuilder,
        body: impl FnOnce(Var, Var) -> Vec<super::loops::Stmt>,
    ) -> super::loops::Stmt {
        let (n, p) = (kb.var(self.batch), kb.var(self.positions));
        kb.for_(n, vec![kb.for_(p, body(n, p))])
    }

    fn count(&self) -> f32 {
        (self.batch * self.positions) as f32
    }
}

/// Training forward: batch statistics, normalised output, saved statistics, running update.
pub fn forward_train(name: &str, bn: &BatchNorm, t: &NormTensors) -> Kernel {
    let (x, y) = (t.x.channels_view(), t.y.channels_view());
    let mut kb = KernelBuilder::new(format!("{name}.forward_train"));
    let ch = Passes::new(&mut kb, &x);
    let c = ix(ch.c);
    let channel = [c.clone()];
    let (sum, mean, squares, invstd, diff) =
        (kb.local(), kb.local(), kb.local(), kb.local(), kb.local());
    let at = |n, p| [ix(n), c.clone(), ix(p)];
    let count = ch.count();
    // PyTorch raises for a single value per channel; a zero variance keeps the update finite.
    let unbias = if count > 1.0 {
        count / (count - 1.0)
    } else {
        0.0
    };
    let momentum = bn.momentum;
    let mut body = vec![set(sum, cst(0.0))];
    body.push(ch.over_channel(&mut kb, |n, p| {
        vec![set(sum, local(sum) + x.load(&at(n, p)))]
    }));
    body.push(set(mean, local(sum) / cst(count)));
    body.push(set(squares, cst(0.0)));
    body.push(ch.over_channel(&mut kb, |n, p| {
        vec![
            set(diff, x.load(&at(n, p)) - local(mean)),
            set(squares, fma(local(diff), local(diff), local(squares))),
        ]
    }));
    let variance = local(squares) / cst(count);
    body.push(set(invstd, cst(1.0) / sqrt(variance.clone() + cst(bn.eps))));
    body.push(ch.over_channel(&mut kb, |n, p| {
        let normalised = (x.load(&at(n, p)) - local(mean)) * local(invstd);
        let value = fma(normalised, t.weight.load(&channel), t.bias.load(&channel));
        vec![y.store(&at(n, p), activated(t.epilogue, value))]
    }));
    body.extend([
        t.saved_mean.store(&channel, local(mean)),
        t.saved_invstd.store(&channel, local(invstd)),
        t.running_mean.store(
            &channel,
            cst(1.0 - momentum) * t.running_mean.load(&channel) + cst(momentum) * local(mean),
        ),
        t.running_var.store(
            &channel,
            cst(1.0 - momentum) * t.running_var.load(&channel)
                + cst(momentum) * (variance * cst(unbias)),
        ),
    ]);
    let top = kb.parallel_for(ch.c, body);
    kb.finish(vec![top])
}

/// Inference: `y = (x − running_mean) / √(running_var + eps) · weight + bias`, parallel over
/// the batch.
pub fn forward_infer(name: &str, bn: &BatchNorm, t: &NormTensors) -> Kernel {
    let (x, y) = (t.x.channels_view(), t.y.channels_view());
    let mut kb = KernelBuilder::new(format!("{name}.forward"));
    let (n, c, p) = (kb.var(x.dims[0]), kb.var(x.dims[1]), kb.var(x.dims[2]));
    let invstd = kb.local();
    let at = [ix(n), ix(c), ix(p)];
    let normalised = (x.load(&at) - t.running_mean.load(&[ix(c)])) * local(invstd);
    let per_channel = vec![
        set(
            invstd,
            cst(1.0) / sqrt(t.running_var.load(&[ix(c)]) + cst(bn.eps)),
        ),
        kb.for_(
            p,
            vec![y.store(
                &at,
                activated(
                    t.epilogue,
                    fma(normalised, t.weight.load(&[ix(c)]), t.bias.load(&[ix(c)])),
                ),
            )],
        ),
    ];
    let top = kb.parallel_for(n, vec![kb.for_(c, per_channel)]);
    kb.finish(vec![top])
}

/// The weights and bias of a convolution with this batchnorm folded into it for inference
/// (`passes::fold`), as PyTorch's `fuse_conv_bn_eval`: per output channel `c`, with
/// `s = 1/√(var[c] + eps)`, `w'[c, ..] = w[c, ..]·(gamma[c]·s)` and
/// `b'[c] = (b[c] − mean[c])·s·gamma[c] + beta[c]` (`b = 0` without a bias); parallel over
/// channels.
pub fn fold_into_conv(
    name: &str,
    bn: &BatchNorm,
    t: &NormTensors,
    weight: &Tensor,
    bias: Option<&Tensor>,
    folded_weight: &Tensor,
    folded_bias: &Tensor,
) -> Kernel {
    let per_channel = weight.dims[1..].iter().product::<usize>();
    let (w, fw) = (
        weight.view(vec![bn.channels, per_channel]),
        folded_weight.view(vec![bn.channels, per_channel]),
    );
    let mut kb = KernelBuilder::new(name);
    let (c, e) = (kb.var(bn.channels), kb.var(per_channel));
    let (invstd, scale) = (kb.local(), kb.local());
    let at = [ix(c)];
    let b = bias.map_or(cst(0.0), |b| b.load(&at));
    let per_channel = vec![
        set(
            invstd,
            cst(1.0) / sqrt(t.running_var.load(&at) + cst(bn.eps)),
        ),
        set(scale, t.weight.load(&at) * local(invstd)),
        kb.for_(
            e,
            vec![fw.store(&[ix(c), ix(e)], w.load(&[ix(c), ix(e)]) * local(scale))],
        ),
        folded_bias.store(
            &at,
            (b - t.running_mean.load(&at)) * local(invstd) * t.weight.load(&at) + t.bias.load(&at),
        ),
    ];
    let top = kb.parallel_for(c, per_channel);
    kb.finish(vec![top])
}

/// `act(value)`, or `value` without an epilogue.
fn activated(epilogue: Option<Activation>, value: Expr) -> Expr {
    match epilogue {
        Some(act) => apply(act, value),
        None => value,
    }
}

/// Training backward, one kernel parallel over channels: `dweight = Σ dy·x̂`, `dbias = Σ dy`,
/// and (if the input needs it) `dx += (dy − mean(dy) − x̂·mean(dy·x̂)) · invstd · weight`.
pub fn backward(
    name: &str,
    t: &NormTensors,
    dy: &Tensor,
    dx: Option<&Tensor>,
    dweight: &Tensor,
    dbias: &Tensor,
) -> Kernel {
    let (x, y, dy) = (t.x.channels_view(), t.y.channels_view(), dy.channels_view());
    let mut kb = KernelBuilder::new(format!("{name}.backward"));
    let ch = Passes::new(&mut kb, &x);
    let c = ix(ch.c);
    let channel = [c.clone()];
    let (mean, invstd, sum_dy, sum_dy_xhat, xhat, g) = (
        kb.local(),
        kb.local(),
        kb.local(),
        kb.local(),
        kb.local(),
        kb.local(),
    );
    let at = |n, p| [ix(n), c.clone(), ix(p)];
    // The gradient with respect to the normalised value, before the epilogue.
    let gradient = |n, p| {
        set(
            g,
            through_epilogue(t.epilogue, y.load(&at(n, p)), dy.load(&at(n, p))),
        )
    };
    let normalise = |n, p| set(xhat, (x.load(&at(n, p)) - local(mean)) * local(invstd));
    let mut body = vec![
        set(mean, t.saved_mean.load(&channel)),
        set(invstd, t.saved_invstd.load(&channel)),
        set(sum_dy, cst(0.0)),
        set(sum_dy_xhat, cst(0.0)),
    ];
    body.push(ch.over_channel(&mut kb, |n, p| {
        vec![
            normalise(n, p),
            gradient(n, p),
            set(sum_dy, local(sum_dy) + local(g)),
            set(sum_dy_xhat, fma(local(g), local(xhat), local(sum_dy_xhat))),
        ]
    }));
    body.push(dweight.store(&channel, local(sum_dy_xhat)));
    body.push(dbias.store(&channel, local(sum_dy)));
    if let Some(dx) = dx {
        let dx = dx.channels_view();
        let count = cst(ch.count());
        body.push(ch.over_channel(&mut kb, |n, p| {
            let centred = local(g)
                - local(sum_dy) / count.clone()
                - local(xhat) * (local(sum_dy_xhat) / count);
            vec![
                normalise(n, p),
                gradient(n, p),
                dx.accumulate(
                    &at(n, p),
                    centred * (local(invstd) * t.weight.load(&channel)),
                ),
            ]
        }));
    }
    let top = kb.parallel_for(ch.c, body);
    kb.finish(vec![top])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::ParamId;
    use crate::lower::interp::run;
    use crate::lower::loops::BufId;

    const TOL: f32 = 1e-5;

    fn bn() -> BatchNorm {
        BatchNorm {
            channels: 1,
            eps: 0.0,
            momentum: 0.5,
            weight: ParamId(0),
            bias: ParamId(1),
            running_mean: ParamId(2),
            running_var: ParamId(3),
        }
    }

    fn close(a: &[f32], b: &[f32]) -> bool {
        a.iter().zip(b).all(|(a, b)| (a - b).abs() <= TOL)
    }

    /// Buffers: 0 x, 1 y, 2 weight, 3 bias, 4 running mean, 5 running var, 6-7 saved,
    /// 8 dy, 9 dx, 10 dweight, 11 dbias; the batch holds one channel of `xs.len()` values.
    fn run_layer(xs: &[f32], dys: &[f32], kernels: &[&str]) -> Vec<Vec<f32>> {
        let batch = xs.len();
        let [x, y, dy, dx]: [Tensor; 4] =
            [0, 1, 8, 9].map(|b| Tensor::new(BufId(b), vec![batch, 1]));
        let [w, b, rm, rv, sm, si, dw, db]: [Tensor; 8] =
            [2, 3, 4, 5, 6, 7, 10, 11].map(|b| Tensor::new(BufId(b), vec![1]));
        let t = NormTensors {
            epilogue: None,
            x: &x,
            y: &y,
            weight: &w,
            bias: &b,
            running_mean: &rm,
            running_var: &rv,
            saved_mean: &sm,
            saved_invstd: &si,
        };
        let mut bufs = vec![
            xs.to_vec(),
            vec![0.; batch],
            vec![2.],
            vec![0.5],
            vec![0.],
            vec![1.],
            vec![0.],
            vec![0.],
            dys.to_vec(),
            vec![0.; batch],
            vec![0.],
            vec![0.],
        ];
        for &kernel in kernels {
            let k = match kernel {
                "train" => forward_train("bn", &bn(), &t),
                "infer" => forward_infer("bn", &bn(), &t),
                _ => backward("bn", &t, &dy, Some(&dx), &dw, &db),
            };
            run(&k, &mut bufs).unwrap();
        }
        bufs
    }

    /// Values 1, 3: mean 2, biased variance 1 (normalising), unbiased 2 (running update).
    #[test]
    fn training_forward_and_running_update() {
        let bufs = run_layer(&[1., 3.], &[0., 0.], &["train"]);
        assert!(close(&bufs[1], &[-1.5, 2.5]), "{:?}", bufs[1]);
        assert_eq!((bufs[6][0], bufs[7][0]), (2., 1.));
        assert_eq!((bufs[4][0], bufs[5][0]), (1., 1.5));
        let bufs = run_layer(&[1., 3.], &[0., 0.], &["train", "infer"]);
        // (x − 1) / √1.5 · 2 + 0.5 with the updated running statistics.
        let expect: Vec<f32> = [1f32, 3.]
            .iter()
            .map(|x| (x - 1.) / 1.5f32.sqrt() * 2. + 0.5)
            .collect();
        assert!(close(&bufs[1], &expect), "{:?}", bufs[1]);
    }

    /// The gradients of `L = Σ dy·y` against central differences (step 1e-2, tolerance 2e-3:
    /// f32 rounding of L divided by the step).
    #[test]
    fn backward_matches_finite_differences() {
        let (xs, dys) = ([1f32, 2., 4., -0.5], [1f32, -2., 0.5, 0.25]);
        let grads = run_layer(&xs, &dys, &["train", "backward"]);
        let loss = |xs: &[f32]| -> f32 {
            let y = &run_layer(xs, &dys, &["train"])[1];
            y.iter().zip(&dys).map(|(y, d)| y * d).sum()
        };
        let h = 1e-2;
        for i in 0..xs.len() {
            let (mut up, mut down) = (xs, xs);
            up[i] += h;
            down[i] -= h;
            let numeric = (loss(&up) - loss(&down)) / (2. * h);
            assert!(
                (numeric - grads[9][i]).abs() < 2e-3,
                "dx[{i}]: {numeric} vs {}",
                grads[9][i]
            );
        }
        // dbias = Σ dy; dweight = Σ dy·x̂ = (L − bias·Σ dy) / weight.
        let sum_dy: f32 = dys.iter().sum();
        assert!((grads[11][0] - sum_dy).abs() < TOL);
        assert!((grads[10][0] - (loss(&xs) - 0.5 * sum_dy) / 2.).abs() < TOL);
    }
}
