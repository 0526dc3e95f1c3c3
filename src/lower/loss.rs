//! Losses: one kernel writes each sample's loss and the gradient of the mean loss with respect
//! to the network's output.
//!
//! - Cross-entropy (`nn.CrossEntropyLoss`, integer labels stored as `f32`): the loss of a sample
//!   is `ln Σ e^(y − m) − (y[label] − m)` with `m` the largest logit; the gradient is
//!   `(softmax(y) − onehot(label)) / N`. The output is read as `N` rows of logits.
//! - Mean squared error (`nn.MSELoss`): a sample's loss is `Σ_e (y − t)² / E`, so the mean over
//!   the batch is the mean over all elements; the gradient is `2(y − t) / (N·E)`.

use super::builder::{cmp, cst, exp, fma, ix, ln, local, max, select, set, KernelBuilder, Tensor};
use super::loops::{CmpOp, Expr, Kernel};
use crate::ir::Loss;

/// The tensors of the loss kernel: `output`, `dy` (its gradient) and `truth` are read as
/// `[N, E]`; `truth` is the labels `[N]` for cross-entropy, the target for MSE.
pub struct LossTensors<'a> {
    pub output: &'a Tensor,
    pub truth: &'a Tensor,
    pub loss: &'a Tensor,
    /// `None` when nothing upstream needs a gradient (a network without parameters).
    pub dy: Option<&'a Tensor>,
}

/// The loss kernel, parallel over the batch.
pub fn forward_backward(loss: Loss, t: &LossTensors) -> Kernel {
    match loss {
        Loss::CrossEntropy => cross_entropy(t),
        Loss::Mse => mse(t),
    }
}

fn cross_entropy(t: &LossTensors) -> Kernel {
    let y = t.output.rows();
    let (batch, classes) = (y.dims[0], y.dims[1]);
    let mut kb = KernelBuilder::new("loss.cross_entropy");
    let n = kb.var(batch);
    let [c1, c2, c3, c4] = [(); 4].map(|_| kb.var(classes));
    let (top_logit, sum, picked) = (kb.local(), kb.local(), kb.local());
    // Logits shifted by their maximum: exp never overflows, and the picked logit's shift is
    // exact (as log_softmax), so equal large logits give exactly ln(classes).
    let shifted = |c| y.load(&[ix(n), ix(c)]) - local(top_logit);
    let is_label = |c| cmp(CmpOp::Eq, Expr::IndexValue(ix(c)), t.truth.load(&[ix(n)]));
    let mut body = vec![
        set(top_logit, cst(f32::NEG_INFINITY)),
        kb.for_(
            c1,
            vec![set(
                top_logit,
                max(local(top_logit), y.load(&[ix(n), ix(c1)])),
            )],
        ),
        set(sum, cst(0.0)),
        kb.for_(c2, vec![set(sum, local(sum) + exp(shifted(c2)))]),
        set(picked, cst(0.0)),
        kb.for_(
            c3,
            vec![set(
                picked,
                local(picked) + select(is_label(c3), shifted(c3), cst(0.0)),
            )],
        ),
        t.loss.store(&[ix(n)], ln(local(sum)) - local(picked)),
    ];
    if let Some(dy) = t.dy {
        let dy = dy.rows();
        let softmax = exp(shifted(c4)) / local(sum);
        let onehot = select(is_label(c4), cst(1.0), cst(0.0));
        let grad = (softmax - onehot) / cst(batch as f32);
        body.push(kb.for_(c4, vec![dy.store(&[ix(n), ix(c4)], grad)]));
    }
    let top = kb.parallel_for(n, body);
    kb.finish(vec![top])
}

fn mse(t: &LossTensors) -> Kernel {
    let (y, target) = (t.output.rows(), t.truth.rows());
    let (batch, elements) = (y.dims[0], y.dims[1]);
    let mut kb = KernelBuilder::new("loss.mse");
    let (n, e) = (kb.var(batch), kb.var(elements));
    let (squares, diff) = (kb.local(), kb.local());
    let at = [ix(n), ix(e)];
    let mut per_element = vec![
        set(diff, y.load(&at) - target.load(&at)),
        set(squares, fma(local(diff), local(diff), local(squares))),
    ];
    if let Some(dy) = t.dy {
        let scale = 2.0 / (batch * elements) as f32;
        per_element.push(dy.rows().store(&at, local(diff) * cst(scale)));
    }
    let body = vec![
        set(squares, cst(0.0)),
        kb.for_(e, per_element),
        t.loss
            .store(&[ix(n)], local(squares) / cst(elements as f32)),
    ];
    let top = kb.parallel_for(n, body);
    kb.finish(vec![top])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lower::interp::run;
    use crate::lower::loops::BufId;

    const TOL: f32 = 1e-6;

    /// Batch 2, 2 classes: logits (0, ln 3) with label 1 → loss ln(4/3), softmax (1/4, 3/4);
    /// logits (1000, 1000) with label 0 → loss ln 2 without overflow.
    #[test]
    fn cross_entropy_values_and_gradient() {
        let y = Tensor::new(BufId(0), vec![2, 2]);
        let labels = Tensor::new(BufId(1), vec![2]);
        let loss = Tensor::new(BufId(2), vec![2]);
        let dy = Tensor::new(BufId(3), vec![2, 2]);
        let t = LossTensors {
            output: &y,
            truth: &labels,
            loss: &loss,
            dy: Some(&dy),
        };
        let mut bufs = vec![
            vec![0., 3f32.ln(), 1000., 1000.],
            vec![1., 0.],
            vec![0.; 2],
            vec![0.; 4],
        ];
        run(&forward_backward(Loss::CrossEntropy, &t), &mut bufs).unwrap();
        let expect_loss = [(4f32 / 3.).ln(), 2f32.ln()];
        assert!(
            bufs[2]
                .iter()
                .zip(expect_loss)
                .all(|(a, b)| (a - b).abs() < TOL),
            "{:?}",
            bufs[2]
        );
        let expect_grad = [0.125, -0.125, -0.25, 0.25];
        assert!(
            bufs[3]
                .iter()
                .zip(expect_grad)
                .all(|(a, b)| (a - b).abs() < TOL),
            "{:?}",
            bufs[3]
        );
    }

    #[test]
    fn mse_is_the_mean_over_all_elements() {
        let y = Tensor::new(BufId(0), vec![2, 2]);
        let target = Tensor::new(BufId(1), vec![2, 2]);
        let loss = Tensor::new(BufId(2), vec![2]);
        let dy = Tensor::new(BufId(3), vec![2, 2]);
        let t = LossTensors {
            output: &y,
            truth: &target,
            loss: &loss,
            dy: Some(&dy),
        };
        let mut bufs = vec![
            vec![1., 2., 3., 4.],
            vec![0., 2., 5., 4.],
            vec![0.; 2],
            vec![0.; 4],
        ];
        run(&forward_backward(Loss::Mse, &t), &mut bufs).unwrap();
        assert_eq!(bufs[2], vec![0.5, 2.]);
        assert_eq!(bufs[3], vec![0.5, 0., -1., 0.]);
    }
}
