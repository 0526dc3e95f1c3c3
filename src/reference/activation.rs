//! Element-wise activations and softmax over the channel axis (axis 1, `nn.Softmax(dim=1)`).
//!
//! Backward rules are written in terms of the input `x` (relu, leaky_relu: PyTorch's `x > 0`
//! test, so the gradient at exactly 0 is that of the negative side) or of the output `y`
//! (sigmoid `y(1 − y)`, tanh `1 − y²`, softmax `y ⊙ (gy − Σ_c gy·y)`).

use ndarray::{ArrayD, Axis, Zip};

use crate::ir::Activation;

/// `x: [N, C, ...]` → same shape.
pub fn forward(x: &ArrayD<f32>, activation: Activation) -> ArrayD<f32> {
    match activation {
        Activation::Relu => x.mapv(|v| v.max(0.0)),
        Activation::LeakyRelu { slope } => x.mapv(|v| if v > 0.0 { v } else { slope * v }),
        Activation::Sigmoid => x.mapv(|v| (1.0 / (1.0 + (-(v as f64)).exp())) as f32),
        Activation::Tanh => x.mapv(|v| (v as f64).tanh() as f32),
        Activation::Softmax => softmax(x),
    }
}

/// The gradient with respect to `x`, given the forward's input `x`, output `y` and `gy`.
pub fn backward(
    x: &ArrayD<f32>,
    y: &ArrayD<f32>,
    activation: Activation,
    gy: &ArrayD<f32>,
) -> ArrayD<f32> {
    assert_eq!(gy.shape(), y.shape(), "activation: output gradient shape");
    match activation {
        Activation::Relu => Zip::from(x)
            .and(gy)
            .map_collect(|&x, &g| if x > 0.0 { g } else { 0.0 }),
        Activation::LeakyRelu { slope } => {
            Zip::from(x)
                .and(gy)
                .map_collect(|&x, &g| if x > 0.0 { g } else { slope * g })
        }
        Activation::Sigmoid => Zip::from(y).and(gy).map_collect(|&y, &g| g * y * (1.0 - y)),
        Activation::Tanh => Zip::from(y).and(gy).map_collect(|&y, &g| g * (1.0 - y * y)),
        Activation::Softmax => softmax_backward(y, gy),
    }
}

/// The gradient with respect to `x` from the output `y` alone, as an epilogue's backward
/// (`passes::fuse` fuses only the activations where this is exact: for relu and leaky relu
/// with a positive slope, `y > 0` exactly when `x > 0`).
///
/// # Panics
/// For softmax or a leaky relu slope ≤ 0, which are never epilogues.
pub fn backward_from_output(
    y: &ArrayD<f32>,
    activation: Activation,
    gy: &ArrayD<f32>,
) -> ArrayD<f32> {
    match activation {
        Activation::Softmax => panic!("softmax is never an epilogue"),
        Activation::LeakyRelu { slope } if slope.is_nan() || slope <= 0.0 => {
            panic!("a leaky relu of slope {slope} is never an epilogue")
        }
        _ => backward(y, y, activation, gy),
    }
}

/// Softmax along axis 1 at every other index, stable: the lane's maximum is subtracted first.
pub fn softmax(x: &ArrayD<f32>) -> ArrayD<f32> {
    let mut y = x.clone();
    for mut lane in y.lanes_mut(Axis(1)) {
        let max = lane.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let exps: Vec<f64> = lane.iter().map(|&v| ((v - max) as f64).exp()).collect();
        let total: f64 = exps.iter().sum();
        for (out, e) in lane.iter_mut().zip(exps) {
            *out = (e / total) as f32;
        }
    }
    y
}

/// `gx = y ⊙ (gy − Σ_c gy·y)` along axis 1.
fn softmax_backward(y: &ArrayD<f32>, gy: &ArrayD<f32>) -> ArrayD<f32> {
    let mut gx = gy.clone();
    for (mut g, y) in gx.lanes_mut(Axis(1)).into_iter().zip(y.lanes(Axis(1))) {
        let dot: f64 = g.iter().zip(&y).map(|(&g, &y)| g as f64 * y as f64).sum();
        for (g, &y) in g.iter_mut().zip(&y) {
            *g = (y as f64 * (*g as f64 - dot)) as f32;
        }
    }
    gx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::check::{
        assert_gradient_close, away_from_zero, numeric_gradient, uniform, weighted_sum, Rng,
    };
    use ndarray::{arr2, IxDyn};

    #[test]
    fn forward_values() {
        let x = arr2(&[[-2f32, 0.0, 3.0]]).into_dyn();
        assert_eq!(
            forward(&x, Activation::Relu),
            arr2(&[[0f32, 0., 3.]]).into_dyn()
        );
        assert_eq!(
            forward(&x, Activation::LeakyRelu { slope: 0.1 }),
            arr2(&[[-0.2f32, 0., 3.]]).into_dyn()
        );
        assert_eq!(forward(&x, Activation::Sigmoid)[[0, 1]], 0.5);
        assert!((forward(&x, Activation::Tanh)[[0, 2]] - 3f32.tanh()).abs() < 1e-7);
        // softmax([−2, 0, 3]) = e^x / (e^−2 + 1 + e^3).
        let total = (-2f32).exp() + 1.0 + 3f32.exp();
        let y = forward(&x, Activation::Softmax);
        for (i, v) in [-2f32, 0., 3.].into_iter().enumerate() {
            assert!(
                (y[[0, i]] - v.exp() / total).abs() < 1e-6,
                "softmax element {i}"
            );
        }
    }

    #[test]
    fn softmax_is_stable_and_runs_over_the_channel_axis() {
        // Logits of 1000 overflow a naive exp; every spatial position sums to 1 over channels.
        let x = ArrayD::from_shape_vec(IxDyn(&[1, 2, 2]), vec![1000f32, 0., 1000., 0.]).unwrap();
        let y = softmax(&x);
        assert_eq!(y.into_raw_vec_and_offset().0, vec![0.5, 0.5, 0.5, 0.5]);
    }

    #[test]
    fn relu_gradient_at_zero_is_zero_and_leaky_gets_the_slope() {
        let x = arr2(&[[0f32, 1.]]).into_dyn();
        let gy = arr2(&[[2f32, 2.]]).into_dyn();
        let y = forward(&x, Activation::Relu);
        assert_eq!(
            backward(&x, &y, Activation::Relu, &gy),
            arr2(&[[0f32, 2.]]).into_dyn()
        );
        let leaky = Activation::LeakyRelu { slope: 0.25 };
        let y = forward(&x, leaky);
        assert_eq!(
            backward(&x, &y, leaky, &gy),
            arr2(&[[0.5f32, 2.]]).into_dyn()
        );
    }

    #[test]
    fn backward_matches_finite_differences() {
        let mut rng = Rng::new(5);
        let all = [
            Activation::Relu,
            Activation::LeakyRelu { slope: 0.1 },
            Activation::Sigmoid,
            Activation::Tanh,
            Activation::Softmax,
        ];
        for activation in all {
            // Inputs keep |x| ≥ 0.2 so no step crosses the kink of relu; [N, C, H, W] checks
            // that softmax normalises per spatial position.
            let x = away_from_zero(&[2, 3, 2, 2], &mut rng).mapv(|v| 2.0 * v);
            let r = uniform(&[2, 3, 2, 2], &mut rng);
            let y = forward(&x, activation);
            let numeric = numeric_gradient(&x, |x| weighted_sum(&forward(x, activation), &r));
            assert_gradient_close(
                &backward(&x, &y, activation, &r),
                &numeric,
                &format!("{activation:?}"),
            );
        }
    }
}
