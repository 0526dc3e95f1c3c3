//! Losses on the network's output: softmax cross-entropy with integer labels (mean over the
//! batch, `nn.CrossEntropyLoss`) and mean squared error (mean over every element, `nn.MSELoss`).
//! Each returns the loss and its gradient with respect to the output.

use ndarray::{ArrayD, Axis, Zip};

/// `logits: [N, K]`, one label in `0..K` per sample → (mean of `−log softmax(logits)[label]`,
/// gradient `(softmax − one_hot) / N`). Stable: `log Σ exp` is taken after subtracting each
/// row's maximum.
///
/// # Panics
/// If `logits` is not `[labels.len(), K]` or a label is not below `K` (the runtime checks user
/// labels before they get here).
pub fn cross_entropy(logits: &ArrayD<f32>, labels: &[usize]) -> (f32, ArrayD<f32>) {
    assert_eq!(
        logits.ndim(),
        2,
        "cross_entropy: logits must be [N, K], not {:?}",
        logits.shape()
    );
    let (batch, classes) = (logits.shape()[0], logits.shape()[1]);
    assert_eq!(batch, labels.len(), "cross_entropy: one label per sample");
    let mut grad = ArrayD::zeros(logits.raw_dim());
    let mut total = 0f64;
    for (n, (row, &label)) in logits.axis_iter(Axis(0)).zip(labels).enumerate() {
        assert!(
            label < classes,
            "cross_entropy: label {label} of sample {n} is not below {classes} classes"
        );
        let max = row.fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
        let log_sum_exp = max
            + row
                .iter()
                .map(|&v| (v as f64 - max).exp())
                .sum::<f64>()
                .ln();
        total += log_sum_exp - row[label] as f64;
        for (k, &logit) in row.iter().enumerate() {
            let probability = (logit as f64 - log_sum_exp).exp();
            let target = if k == label { 1.0 } else { 0.0 };
            grad[[n, k]] = ((probability - target) / batch as f64) as f32;
        }
    }
    ((total / batch as f64) as f32, grad)
}

/// Mean of `(output − target)²` over every element, and its gradient `2(output − target) / len`.
pub fn mse(output: &ArrayD<f32>, target: &ArrayD<f32>) -> (f32, ArrayD<f32>) {
    assert_eq!(output.shape(), target.shape(), "mse: target shape");
    let count = output.len() as f64;
    let loss = Zip::from(output)
        .and(target)
        .fold(0f64, |sum, &o, &t| sum + (o as f64 - t as f64).powi(2))
        / count;
    let grad = Zip::from(output)
        .and(target)
        .map_collect(|&o, &t| ((2.0 * (o as f64 - t as f64)) / count) as f32);
    (loss as f32, grad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::check::{assert_gradient_close, numeric_gradient, uniform, Rng};
    use ndarray::arr2;

    #[test]
    fn cross_entropy_of_uniform_logits_is_log_k() {
        let logits = ArrayD::zeros(ndarray::IxDyn(&[2, 4]));
        let (loss, grad) = cross_entropy(&logits, &[0, 3]);
        assert!((loss - 4f32.ln()).abs() < 1e-6, "loss {loss}");
        // (1/4 − 1) / 2 at the label, 1/4 / 2 elsewhere.
        assert_eq!(grad[[0, 0]], -0.375);
        assert_eq!(grad[[0, 1]], 0.125);
    }

    #[test]
    fn cross_entropy_is_stable_for_huge_logits() {
        let logits = arr2(&[[1000f32, 0.], [0., -1000.]]).into_dyn();
        let (loss, grad) = cross_entropy(&logits, &[1, 0]);
        // Sample 0: −log softmax = 1000; sample 1: ≈ e^−1000 ≈ 0. Mean 500.
        assert_eq!(loss, 500.0);
        assert!(grad.iter().all(|v| v.is_finite()));
        assert_eq!(grad[[0, 1]], -0.5);
    }

    #[test]
    fn cross_entropy_gradient_matches_finite_differences() {
        let mut rng = Rng::new(17);
        let logits = uniform(&[3, 5], &mut rng).mapv(|v| 3.0 * v);
        let labels = [4, 0, 2];
        let numeric = numeric_gradient(&logits, |l| cross_entropy(l, &labels).0 as f64);
        assert_gradient_close(
            &cross_entropy(&logits, &labels).1,
            &numeric,
            "cross_entropy",
        );
    }

    #[test]
    fn mse_value_and_gradient() {
        let output = arr2(&[[1f32, 2.], [3., 4.]]).into_dyn();
        let target = arr2(&[[1f32, 0.], [3., 5.]]).into_dyn();
        let (loss, grad) = mse(&output, &target);
        assert_eq!(loss, (0.0 + 4.0 + 0.0 + 1.0) / 4.0);
        assert_eq!(grad, arr2(&[[0f32, 1.], [0., -0.5]]).into_dyn());
        let mut rng = Rng::new(19);
        let output = uniform(&[2, 3, 2], &mut rng);
        let target = uniform(&[2, 3, 2], &mut rng);
        let numeric = numeric_gradient(&output, |o| mse(o, &target).0 as f64);
        assert_gradient_close(&mse(&output, &target).1, &numeric, "mse");
    }
}
