//! Batch normalisation over the channel axis (`nn.BatchNormNd`), for any number of spatial
//! axes: statistics per channel over the batch and every spatial position.
//!
//! Training normalises with the batch mean and the *biased* variance, then updates the running
//! statistics with `running = (1 − momentum)·running + momentum·batch`, using the *unbiased*
//! variance (PyTorch). Inference normalises with the running statistics.

use ndarray::{ArrayD, ArrayViewD, Axis};

use crate::ir::BatchNorm;

/// Gradients of a training-mode batchnorm with respect to its input and parameters.
#[derive(Clone, Debug)]
pub struct BatchNormGrads {
    /// `[N, C, *S]`
    pub input: ArrayD<f32>,
    /// `[C]`
    pub weight: ArrayD<f32>,
    /// `[C]`
    pub bias: ArrayD<f32>,
}

/// Training mode: `y = (x − mean) / √(var + eps) · weight + bias` with batch statistics, and
/// the running statistics (`[C]` each) updated in place.
///
/// # Panics
/// If a channel has a single value (batch 1 and no spatial axes): PyTorch refuses it too, as
/// the unbiased variance would divide by zero.
pub fn forward_train(
    x: &ArrayD<f32>,
    weight: &ArrayD<f32>,
    bias: &ArrayD<f32>,
    running_mean: &mut ArrayD<f32>,
    running_var: &mut ArrayD<f32>,
    bn: &BatchNorm,
) -> ArrayD<f32> {
    check_shapes(x, bn, &[weight, bias, running_mean, running_var]);
    let mut y = x.clone();
    for channel in 0..bn.channels {
        let values = x.index_axis(Axis(1), channel);
        let (mean, var) = statistics(&values);
        let count = values.len() as f64;
        assert!(
            count > 1.0,
            "batchnorm: expected more than 1 value per channel when training"
        );
        let unbiased = var * count / (count - 1.0);
        let momentum = bn.momentum as f64;
        running_mean[channel] =
            ((1.0 - momentum) * running_mean[channel] as f64 + momentum * mean) as f32;
        running_var[channel] =
            ((1.0 - momentum) * running_var[channel] as f64 + momentum * unbiased) as f32;
        normalise(
            &mut y,
            channel,
            mean,
            var,
            weight[channel],
            bias[channel],
            bn.eps,
        );
    }
    y
}

/// Inference mode: the same affine map with the running statistics.
pub fn forward_infer(
    x: &ArrayD<f32>,
    weight: &ArrayD<f32>,
    bias: &ArrayD<f32>,
    running_mean: &ArrayD<f32>,
    running_var: &ArrayD<f32>,
    bn: &BatchNorm,
) -> ArrayD<f32> {
    check_shapes(x, bn, &[weight, bias, running_mean, running_var]);
    let mut y = x.clone();
    for channel in 0..bn.channels {
        let (mean, var) = (running_mean[channel] as f64, running_var[channel] as f64);
        normalise(
            &mut y,
            channel,
            mean,
            var,
            weight[channel],
            bias[channel],
            bn.eps,
        );
    }
    y
}

/// Gradients of [`forward_train`] (the statistics depend on `x`), given its input `x`, `weight`
/// and `gy`. With `x̂` the normalised input, `m` the values per channel and `ĝ = gy·weight`:
/// `gx = (m·ĝ − Σĝ − x̂·Σ(ĝ·x̂)) / (m·√(var + eps))`, `gweight = Σ gy·x̂`, `gbias = Σ gy`.
pub fn backward_train(
    x: &ArrayD<f32>,
    weight: &ArrayD<f32>,
    bn: &BatchNorm,
    gy: &ArrayD<f32>,
) -> BatchNormGrads {
    check_shapes(x, bn, &[weight]);
    assert_eq!(gy.shape(), x.shape(), "batchnorm: output gradient shape");
    let mut gx = ArrayD::zeros(x.raw_dim());
    let mut gweight = ArrayD::zeros(weight.raw_dim());
    let mut gbias = ArrayD::zeros(weight.raw_dim());
    for channel in 0..bn.channels {
        let values = x.index_axis(Axis(1), channel);
        let upstream = gy.index_axis(Axis(1), channel);
        let (mean, var) = statistics(&values);
        let inv_std = 1.0 / (var + bn.eps as f64).sqrt();
        let count = values.len() as f64;
        let normalised: Vec<f64> = values
            .iter()
            .map(|&v| (v as f64 - mean) * inv_std)
            .collect();
        let scaled: Vec<f64> = upstream
            .iter()
            .map(|&g| g as f64 * weight[channel] as f64)
            .collect();
        let sum_scaled: f64 = scaled.iter().sum();
        let sum_scaled_normalised: f64 = scaled.iter().zip(&normalised).map(|(g, n)| g * n).sum();
        let gx_values = scaled.iter().zip(&normalised).map(|(g, n)| {
            ((count * g - sum_scaled - n * sum_scaled_normalised) * inv_std / count) as f32
        });
        for (out, v) in gx
            .index_axis_mut(Axis(1), channel)
            .iter_mut()
            .zip(gx_values)
        {
            *out = v;
        }
        gweight[channel] = upstream
            .iter()
            .zip(&normalised)
            .map(|(&g, n)| g as f64 * n)
            .sum::<f64>() as f32;
        gbias[channel] = upstream.iter().map(|&g| g as f64).sum::<f64>() as f32;
    }
    BatchNormGrads {
        input: gx,
        weight: gweight,
        bias: gbias,
    }
}

/// Mean and biased variance of one channel's values, in f64.
fn statistics(values: &ArrayViewD<f32>) -> (f64, f64) {
    let count = values.len() as f64;
    let mean = values.iter().map(|&v| v as f64).sum::<f64>() / count;
    let var = values
        .iter()
        .map(|&v| (v as f64 - mean).powi(2))
        .sum::<f64>()
        / count;
    (mean, var)
}

/// `y[:, channel] = (x − mean) / √(var + eps) · weight + bias`, in place.
fn normalise(
    y: &mut ArrayD<f32>,
    channel: usize,
    mean: f64,
    var: f64,
    weight: f32,
    bias: f32,
    eps: f32,
) {
    let inv_std = 1.0 / (var + eps as f64).sqrt();
    y.index_axis_mut(Axis(1), channel)
        .mapv_inplace(|v| ((v as f64 - mean) * inv_std * weight as f64 + bias as f64) as f32);
}

fn check_shapes(x: &ArrayD<f32>, bn: &BatchNorm, per_channel: &[&ArrayD<f32>]) {
    assert!(
        x.ndim() >= 2 && x.shape()[1] == bn.channels,
        "batchnorm: input {:?} has not {} channels",
        x.shape(),
        bn.channels
    );
    for tensor in per_channel {
        assert_eq!(
            tensor.shape(),
            &[bn.channels],
            "batchnorm: per-channel tensor shape"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::ParamId;
    use crate::reference::check::{
        assert_all_close, assert_gradient_close, numeric_gradient, uniform, weighted_sum, Rng,
    };
    use ndarray::{arr1, IxDyn};

    fn batchnorm(channels: usize) -> BatchNorm {
        BatchNorm {
            channels,
            eps: 1e-5,
            momentum: 0.1,
            weight: ParamId(0),
            bias: ParamId(1),
            running_mean: ParamId(2),
            running_var: ParamId(3),
        }
    }

    #[test]
    fn training_normalises_with_biased_variance_and_updates_running_stats_with_unbiased() {
        // One channel holding 1, 2, 3, 4: mean 2.5, biased variance 1.25, unbiased 5/3.
        let x = ArrayD::from_shape_vec(IxDyn(&[2, 1, 2]), vec![1f32, 2., 3., 4.]).unwrap();
        let (weight, bias) = (arr1(&[2f32]).into_dyn(), arr1(&[1f32]).into_dyn());
        let (mut running_mean, mut running_var) =
            (arr1(&[0f32]).into_dyn(), arr1(&[1f32]).into_dyn());
        let y = forward_train(
            &x,
            &weight,
            &bias,
            &mut running_mean,
            &mut running_var,
            &batchnorm(1),
        );
        let inv_std = 1.0 / (1.25f32 + 1e-5).sqrt();
        let expected = x.mapv(|v| (v - 2.5) * inv_std * 2.0 + 1.0);
        assert_all_close(&y, &expected, 1e-6, "batchnorm output");
        assert!(
            (running_mean[0] - 0.25).abs() < 1e-7,
            "running mean {}",
            running_mean[0]
        );
        let expected_var = 0.9 + 0.1 * 5.0 / 3.0;
        assert!(
            (running_var[0] - expected_var).abs() < 1e-6,
            "running var {}",
            running_var[0]
        );
    }

    #[test]
    fn inference_uses_running_statistics() {
        let x = ArrayD::from_shape_vec(IxDyn(&[1, 2, 1]), vec![3f32, 3.]).unwrap();
        let (weight, bias) = (arr1(&[1f32, 2.]).into_dyn(), arr1(&[0f32, 1.]).into_dyn());
        let (mean, var) = (arr1(&[1f32, 2.]).into_dyn(), arr1(&[4f32, 1.]).into_dyn());
        let y = forward_infer(&x, &weight, &bias, &mean, &var, &batchnorm(2));
        let expected = ArrayD::from_shape_vec(
            IxDyn(&[1, 2, 1]),
            vec![2.0 / (4f32 + 1e-5).sqrt(), 2.0 / (1f32 + 1e-5).sqrt() + 1.0],
        )
        .unwrap();
        assert_all_close(&y, &expected, 1e-6, "batchnorm inference");
    }

    #[test]
    fn training_backward_matches_finite_differences() {
        let mut rng = Rng::new(13);
        let bn = batchnorm(3);
        let x = uniform(&[2, 3, 2, 3], &mut rng);
        let weight = uniform(&[3], &mut rng);
        let bias = uniform(&[3], &mut rng);
        let r = uniform(&[2, 3, 2, 3], &mut rng);
        let objective = |x: &ArrayD<f32>, weight: &ArrayD<f32>, bias: &ArrayD<f32>| {
            let (mut mean, mut var) = (ArrayD::zeros(IxDyn(&[3])), ArrayD::ones(IxDyn(&[3])));
            weighted_sum(
                &forward_train(x, weight, bias, &mut mean, &mut var, &bn),
                &r,
            )
        };
        let grads = backward_train(&x, &weight, &bn, &r);
        let gx = numeric_gradient(&x, |x| objective(x, &weight, &bias));
        assert_gradient_close(&grads.input, &gx, "batchnorm input");
        let gw = numeric_gradient(&weight, |w| objective(&x, w, &bias));
        assert_gradient_close(&grads.weight, &gw, "batchnorm weight");
        let gb = numeric_gradient(&bias, |b| objective(&x, &weight, b));
        assert_gradient_close(&grads.bias, &gb, "batchnorm bias");
    }
}
