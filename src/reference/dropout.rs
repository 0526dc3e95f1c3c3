//! Dropout in training: the caller draws the mask (each element `0` or `1/(1 − p)`), so the
//! reference and the JIT can be given the same one. Outside training dropout is the identity,
//! which the graph-level forward applies without calling here.

use ndarray::ArrayD;

/// `x ⊙ mask`.
pub fn forward(x: &ArrayD<f32>, mask: &ArrayD<f32>) -> ArrayD<f32> {
    assert_eq!(x.shape(), mask.shape(), "dropout: mask shape");
    x * mask
}

/// `gy ⊙ mask`: dropped elements get no gradient, kept ones the same scale as in the forward.
pub fn backward(mask: &ArrayD<f32>, gy: &ArrayD<f32>) -> ArrayD<f32> {
    assert_eq!(gy.shape(), mask.shape(), "dropout: mask shape");
    gy * mask
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::check::{
        assert_gradient_close, numeric_gradient, uniform, weighted_sum, Rng,
    };
    use ndarray::arr2;

    #[test]
    fn masked_elements_are_zeroed_and_kept_ones_scaled() {
        // p = 0.5: kept elements are scaled by 2.
        let x = arr2(&[[1f32, 2., 3., 4.]]).into_dyn();
        let mask = arr2(&[[0f32, 2., 2., 0.]]).into_dyn();
        assert_eq!(forward(&x, &mask), arr2(&[[0f32, 4., 6., 0.]]).into_dyn());
        let mut rng = Rng::new(9);
        let r = uniform(&[1, 4], &mut rng);
        let numeric = numeric_gradient(&x, |x| weighted_sum(&forward(x, &mask), &r));
        assert_gradient_close(&backward(&mask, &r), &numeric, "dropout");
    }
}
