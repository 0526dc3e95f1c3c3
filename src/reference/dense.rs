//! Fully connected layer, `nn.Linear`: `y = x Wᵀ + b`, with `x: [N, F]`, `W: [U, F]`, `b: [U]`.
//! Products are taken in f64 so that the oracle's own rounding is negligible.

use ndarray::{Array2, ArrayD, Axis, Ix2};

use crate::ir::Dense;

/// Gradients of a dense layer with respect to its input and parameters.
#[derive(Clone, Debug)]
pub struct DenseGrads {
    /// `[N, F]`
    pub input: ArrayD<f32>,
    /// `[U, F]`
    pub weight: ArrayD<f32>,
    /// `[U]`, when the layer has a bias.
    pub bias: Option<ArrayD<f32>>,
}

/// `x: [N, F]` → `[N, U]`.
///
/// # Panics
/// If the shapes disagree with `dense` (the IR's shape checker prevents this).
pub fn forward(
    x: &ArrayD<f32>,
    weight: &ArrayD<f32>,
    bias: Option<&ArrayD<f32>>,
    dense: &Dense,
) -> ArrayD<f32> {
    let (x, w) = (matrix(x, "input"), matrix(weight, "weight"));
    check_shapes(&x, &w, dense);
    let mut y = x.dot(&w.t());
    if let Some(bias) = bias {
        y += &bias
            .mapv(f64::from)
            .into_dimensionality::<ndarray::Ix1>()
            .expect("dense: bias is [U]");
    }
    y.mapv(|v| v as f32).into_dyn()
}

/// Gradients given the forward's input, weight and `gy: [N, U]`: `gx = gy W`, `gW = gyᵀ x`,
/// `gb = Σ_n gy`. The bias gradient is computed when `dense.bias` is set.
pub fn backward(
    x: &ArrayD<f32>,
    weight: &ArrayD<f32>,
    dense: &Dense,
    gy: &ArrayD<f32>,
) -> DenseGrads {
    let (x, w, gy) = (
        matrix(x, "input"),
        matrix(weight, "weight"),
        matrix(gy, "output gradient"),
    );
    check_shapes(&x, &w, dense);
    assert_eq!(
        gy.dim(),
        (x.nrows(), dense.units),
        "dense: output gradient shape"
    );
    DenseGrads {
        input: gy.dot(&w).mapv(|v| v as f32).into_dyn(),
        weight: gy.t().dot(&x).mapv(|v| v as f32).into_dyn(),
        bias: dense
            .bias
            .map(|_| gy.sum_axis(Axis(0)).mapv(|v| v as f32).into_dyn()),
    }
}

/// A rank-2 tensor as an f64 matrix.
fn matrix(a: &ArrayD<f32>, what: &str) -> Array2<f64> {
    a.mapv(f64::from)
        .into_dimensionality::<Ix2>()
        .unwrap_or_else(|_| {
            panic!(
                "dense: the {what} must have rank 2, not shape {:?}",
                a.shape()
            )
        })
}

fn check_shapes(x: &Array2<f64>, w: &Array2<f64>, dense: &Dense) {
    assert_eq!(x.ncols(), dense.in_features, "dense: input features");
    assert_eq!(
        w.dim(),
        (dense.units, dense.in_features),
        "dense: weight shape"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::ParamId;
    use crate::reference::check::{
        assert_gradient_close, numeric_gradient, uniform, weighted_sum, Rng,
    };
    use ndarray::{arr1, arr2};

    fn dense(in_features: usize, units: usize, bias: bool) -> Dense {
        Dense {
            in_features,
            units,
            weight: ParamId(0),
            bias: bias.then_some(ParamId(1)),
        }
    }

    #[test]
    fn forward_is_x_times_w_transposed_plus_b() {
        let x = arr2(&[[1f32, 2.], [3., 4.]]).into_dyn();
        let w = arr2(&[[1f32, 0.], [0., 1.], [1., 1.]]).into_dyn();
        let b = arr1(&[0f32, 10., 100.]).into_dyn();
        let y = forward(&x, &w, Some(&b), &dense(2, 3, true));
        assert_eq!(y, arr2(&[[1f32, 12., 103.], [3., 14., 107.]]).into_dyn());
    }

    #[test]
    fn backward_matches_finite_differences() {
        let mut rng = Rng::new(11);
        let layer = dense(5, 3, true);
        let (x, w, b) = (
            uniform(&[4, 5], &mut rng),
            uniform(&[3, 5], &mut rng),
            uniform(&[3], &mut rng),
        );
        let r = uniform(&[4, 3], &mut rng);
        let grads = backward(&x, &w, &layer, &r);
        let objective = |x: &ArrayD<f32>, w: &ArrayD<f32>, b: &ArrayD<f32>| {
            weighted_sum(&forward(x, w, Some(b), &layer), &r)
        };
        assert_gradient_close(
            &grads.input,
            &numeric_gradient(&x, |x| objective(x, &w, &b)),
            "dense input",
        );
        assert_gradient_close(
            &grads.weight,
            &numeric_gradient(&w, |w| objective(&x, w, &b)),
            "dense weight",
        );
        let gb = grads.bias.expect("the layer has a bias");
        assert_gradient_close(
            &gb,
            &numeric_gradient(&b, |b| objective(&x, &w, b)),
            "dense bias",
        );
        assert!(backward(&x, &w, &dense(5, 3, false), &r).bias.is_none());
    }
}
