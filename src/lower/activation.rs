//! Activations: element-wise relu, leaky relu, sigmoid, tanh; softmax over the channel axis.
//!
//! Backward reads the forward *output* (`σ' = y(1 − y)`, `tanh' = 1 − y²`, relu's `y > 0`),
//! which the plan keeps anyway; the same formulas ([`apply`], [`gradient_from_output`]) serve
//! the epilogues fused into other ops' kernels. Relu's gradient at 0 is 0, as PyTorch's.

use super::builder::{abs, cmp, cst, exp, ix, local, max, select, set, KernelBuilder, Tensor};
use super::loops::{CmpOp, Expr, Kernel};
use crate::ir::Activation;

/// `f(x)` for an element-wise activation, as one expression (so that any kernel can apply it
/// to a value it is about to store: the fused epilogues of `passes::fuse`).
///
/// - sigmoid `1 / (1 + e^−x)`: for very negative `x` the exponential overflows to ∞ and the
///   result is 0 (the JIT recognises this expression and, below −88.37, returns
///   `1 / (1 + e^88.37)` ≈ 4.1e−39 instead: `jit::math::translate_sigmoid`);
/// - tanh `sign(x) · (1 − e^−2|x|) / (1 + e^−2|x|)`: the exponential never overflows (the two
///   identical exponentials are one after Cranelift's value numbering).
///
/// # Panics
/// For softmax, which is not element-wise (the fusion pass never makes it an epilogue).
pub fn apply(act: Activation, x: Expr) -> Expr {
    let positive = |v: &Expr| cmp(CmpOp::Gt, v.clone(), cst(0.0));
    match act {
        Activation::Relu => max(x, cst(0.0)),
        Activation::LeakyRelu { slope } => select(positive(&x), x.clone(), cst(slope) * x),
        Activation::Sigmoid => cst(1.0) / (cst(1.0) + exp(-x)),
        Activation::Tanh => {
            let t = || exp(cst(-2.0) * abs(x.clone()));
            let sign = select(cmp(CmpOp::Lt, x.clone(), cst(0.0)), cst(-1.0), cst(1.0));
            sign * ((cst(1.0) - t()) / (cst(1.0) + t()))
        }
        Activation::Softmax => panic!("softmax is not element-wise and has no single-value form"),
    }
}

/// `dy · f'(x)` written with the output `y = f(x)` only, for the activations where that is
/// possible: relu and leaky relu with a positive slope (`y > 0` exactly when `x > 0`, so the
/// gradient at 0 is that of the negative side, as PyTorch's), sigmoid `y(1 − y)`, tanh
/// `1 − y²`. `None` for softmax and for leaky relu with a slope ≤ 0.
pub fn gradient_from_output(act: Activation, y: Expr, dy: Expr) -> Option<Expr> {
    let positive = cmp(CmpOp::Gt, y.clone(), cst(0.0));
    match act {
        Activation::Relu => Some(select(positive, dy, cst(0.0))),
        Activation::LeakyRelu { slope } if slope > 0.0 => {
            Some(select(positive, dy.clone(), cst(slope) * dy))
        }
        Activation::Sigmoid => Some(dy * y.clone() * (cst(1.0) - y)),
        Activation::Tanh => Some(dy * (cst(1.0) - y.clone() * y)),
        Activation::LeakyRelu { .. } | Activation::Softmax => None,
    }
}

/// The gradient with respect to a node's un-activated result, given `dy` with respect to its
/// value `y` and its epilogue (`dy` itself without one).
///
/// # Panics
/// If the epilogue's derivative is not a function of its output: `passes::fuse` never makes
/// such an activation an epilogue.
pub fn through_epilogue(epilogue: Option<Activation>, y: Expr, dy: Expr) -> Expr {
    match epilogue {
        None => dy,
        Some(act) => gradient_from_output(act, y, dy)
            .unwrap_or_else(|| panic!("{act:?} cannot be an epilogue (passes::fuse)")),
    }
}

/// The value a contraction nest stores for its sum `acc`: `acc`, or its fused activation.
pub fn fused(epilogue: Option<Activation>, acc: Expr) -> Expr {
    match epilogue {
        None => acc,
        Some(act) => apply(act, acc),
    }
}

/// `y = f(x)`, parallel over the batch.
pub fn forward(name: &str, activation: Activation, x: &Tensor, y: &Tensor) -> Kernel {
    match activation {
        Activation::Softmax => softmax_forward(name, x, y),
        _ => elementwise_forward(name, x, y, activation),
    }
}

/// `dx += f'(x) · dy`, parallel over the batch.
pub fn backward(
    name: &str,
    activation: Activation,
    x: &Tensor,
    y: &Tensor,
    dy: &Tensor,
    dx: &Tensor,
) -> Kernel {
    let t = ElementwiseGrad { x, y, dy, dx };
    match activation {
        Activation::Softmax => softmax_backward(name, y, dy, dx),
        // With a slope ≤ 0 the output does not tell the sign of the input.
        Activation::LeakyRelu { slope } if slope.is_nan() || slope <= 0.0 => {
            elementwise_backward(name, &t, |x, _, g| {
                select(cmp(CmpOp::Gt, x, cst(0.0)), g.clone(), cst(slope) * g)
            })
        }
        _ => elementwise_backward(name, &t, |_, y, g| through_epilogue(Some(activation), y, g)),
    }
}

/// `y[n, e] = f(x[n, e])`, with `x[n, e]` loaded once into a local.
fn elementwise_forward(name: &str, x: &Tensor, y: &Tensor, activation: Activation) -> Kernel {
    let (x, y) = (x.rows(), y.rows());
    let mut kb = KernelBuilder::new(format!("{name}.forward"));
    let (n, e) = (kb.var(x.dims[0]), kb.var(x.dims[1]));
    let value = kb.local();
    let at = [ix(n), ix(e)];
    let body = vec![
        set(value, x.load(&at)),
        y.store(&at, apply(activation, local(value))),
    ];
    let top = kb.parallel_for(n, vec![kb.for_(e, body)]);
    kb.finish(vec![top])
}

/// `dz = dy · f'(y)` into its own buffer, parallel over the batch: the gradient before the
/// epilogue, for a backward whose contractions read `dz` as their operand (dense).
pub fn epilogue_gradient(
    name: &str,
    act: Activation,
    y: &Tensor,
    dy: &Tensor,
    dz: &Tensor,
) -> Kernel {
    let (y, dy, dz) = (y.rows(), dy.rows(), dz.rows());
    let mut kb = KernelBuilder::new(format!("{name}.epilogue_grad"));
    let (n, e) = (kb.var(y.dims[0]), kb.var(y.dims[1]));
    let at = [ix(n), ix(e)];
    let value = through_epilogue(Some(act), y.load(&at), dy.load(&at));
    let top = kb.parallel_for(n, vec![kb.for_(e, vec![dz.store(&at, value)])]);
    kb.finish(vec![top])
}

struct ElementwiseGrad<'a> {
    x: &'a Tensor,
    y: &'a Tensor,
    dy: &'a Tensor,
    dx: &'a Tensor,
}

/// `dx[n, e] += f(x[n, e], y[n, e], dy[n, e])`
fn elementwise_backward(
    name: &str,
    t: &ElementwiseGrad,
    f: impl Fn(Expr, Expr, Expr) -> Expr,
) -> Kernel {
    let (x, y, dy, dx) = (t.x.rows(), t.y.rows(), t.dy.rows(), t.dx.rows());
    let mut kb = KernelBuilder::new(format!("{name}.backward_input"));
    let (n, e) = (kb.var(x.dims[0]), kb.var(x.dims[1]));
    let at = [ix(n), ix(e)];
    let value = f(x.load(&at), y.load(&at), dy.load(&at));
    let top = kb.parallel_for(n, vec![kb.for_(e, vec![dx.accumulate(&at, value)])]);
    kb.finish(vec![top])
}

/// `y[n, c, p] = e^(x − m) / Σ_c e^(x − m)` with `m` the channel maximum (no overflow),
/// parallel over the batch.
fn softmax_forward(name: &str, x: &Tensor, y: &Tensor) -> Kernel {
    let (x, y) = (x.channels_view(), y.channels_view());
    let mut kb = KernelBuilder::new(format!("{name}.forward"));
    let (n, p) = (kb.var(x.dims[0]), kb.var(x.dims[2]));
    let (c1, c2, c3) = (kb.var(x.dims[1]), kb.var(x.dims[1]), kb.var(x.dims[1]));
    let (top_value, sum) = (kb.local(), kb.local());
    let shifted = |c| exp(x.load(&[ix(n), ix(c), ix(p)]) - local(top_value));
    let per_position = vec![
        set(top_value, cst(f32::NEG_INFINITY)),
        kb.for_(
            c1,
            vec![set(
                top_value,
                max(local(top_value), x.load(&[ix(n), ix(c1), ix(p)])),
            )],
        ),
        set(sum, cst(0.0)),
        kb.for_(c2, vec![set(sum, local(sum) + shifted(c2))]),
        kb.for_(
            c3,
            vec![y.store(&[ix(n), ix(c3), ix(p)], shifted(c3) / local(sum))],
        ),
    ];
    let top = kb.parallel_for(n, vec![kb.for_(p, per_position)]);
    kb.finish(vec![top])
}

/// `dx = y ⊙ (dy − Σ_c dy·y)` over the channel axis, parallel over the batch.
fn softmax_backward(name: &str, y: &Tensor, dy: &Tensor, dx: &Tensor) -> Kernel {
    let (y, dy, dx) = (y.channels_view(), dy.channels_view(), dx.channels_view());
    let mut kb = KernelBuilder::new(format!("{name}.backward_input"));
    let (n, p) = (kb.var(y.dims[0]), kb.var(y.dims[2]));
    let (c1, c2) = (kb.var(y.dims[1]), kb.var(y.dims[1]));
    let dot = kb.local();
    let at = |c| [ix(n), ix(c), ix(p)];
    let per_position = vec![
        set(dot, cst(0.0)),
        kb.for_(
            c1,
            vec![set(
                dot,
                super::builder::fma(dy.load(&at(c1)), y.load(&at(c1)), local(dot)),
            )],
        ),
        kb.for_(
            c2,
            vec![dx.accumulate(&at(c2), y.load(&at(c2)) * (dy.load(&at(c2)) - local(dot)))],
        ),
    ];
    let top = kb.parallel_for(n, vec![kb.for_(p, per_position)]);
    kb.finish(vec![top])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lower::interp::run;
    use crate::lower::loops::BufId;

    const TOL: f32 = 1e-6;

    /// Runs forward then backward with dy = 1 on one sample of `xs`; returns (y, dx).
    fn run_both(activation: Activation, xs: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let shape = vec![1, xs.len()];
        let t = |b| Tensor::new(BufId(b), shape.clone());
        let (x, y, dy, dx) = (t(0), t(1), t(2), t(3));
        let k = xs.len();
        let mut bufs = vec![xs.to_vec(), vec![0.; k], vec![1.; k], vec![0.; k]];
        run(&forward("a", activation, &x, &y), &mut bufs).unwrap();
        run(&backward("a", activation, &x, &y, &dy, &dx), &mut bufs).unwrap();
        (bufs[1].clone(), bufs[3].clone())
    }

    fn close(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(a, b)| (a - b).abs() <= TOL)
    }

    #[test]
    fn relu_and_leaky_relu() {
        let (y, dx) = run_both(Activation::Relu, &[-2., 0., 3.]);
        assert_eq!((y, dx), (vec![0., 0., 3.], vec![0., 0., 1.]));
        let (y, dx) = run_both(Activation::LeakyRelu { slope: 0.5 }, &[-2., 0., 3.]);
        assert_eq!((y, dx), (vec![-1., 0., 3.], vec![0.5, 0.5, 1.]));
    }

    #[test]
    fn sigmoid_and_tanh_match_std_within_1e_6() {
        let xs = [-100., -3., -0.5, 0., 0.5, 3., 100.];
        let (y, dx) = run_both(Activation::Sigmoid, &xs);
        let s: Vec<f32> = xs.iter().map(|x| 1. / (1. + (-x).exp())).collect();
        assert!(close(&y, &s), "{y:?}");
        assert!(close(
            &dx,
            &s.iter().map(|s| s * (1. - s)).collect::<Vec<_>>()
        ));
        let (y, dx) = run_both(Activation::Tanh, &xs);
        let t: Vec<f32> = xs.iter().map(|x| x.tanh()).collect();
        assert!(close(&y, &t), "{y:?}");
        assert!(close(
            &dx,
            &t.iter().map(|t| 1. - t * t).collect::<Vec<_>>()
        ));
    }

    /// Softmax over 2 channels at 2 positions: channel axis is the middle one.
    #[test]
    fn softmax_over_channels() {
        let x = Tensor::new(BufId(0), vec![1, 2, 2]);
        let y = Tensor::new(BufId(1), vec![1, 2, 2]);
        let dy = Tensor::new(BufId(2), vec![1, 2, 2]);
        let dx = Tensor::new(BufId(3), vec![1, 2, 2]);
        // Position 0 has logits (0, ln 3) → (1/4, 3/4); position 1 has (1000, 1000) → halves.
        let mut bufs = vec![
            vec![0., 1000., 3f32.ln(), 1000.],
            vec![0.; 4],
            vec![1., 0., 0., 0.],
            vec![0.; 4],
        ];
        run(&forward("s", Activation::Softmax, &x, &y), &mut bufs).unwrap();
        assert!(close(&bufs[1], &[0.25, 0.5, 0.75, 0.5]), "{:?}", bufs[1]);
        run(
            &backward("s", Activation::Softmax, &x, &y, &dy, &dx),
            &mut bufs,
        )
        .unwrap();
        // dx = y(dy − y·dy): position 0 → (1/4·3/4, 3/4·(−1/4)).
        assert!(close(&bufs[3], &[0.1875, 0., -0.1875, 0.]), "{:?}", bufs[3]);
    }
}
