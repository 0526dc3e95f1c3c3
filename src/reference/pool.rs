//! Max and average pooling over 1, 2 or 3 spatial axes (`nn.MaxPoolNd`, `nn.AvgPoolNd` in floor
//! mode), and global average pooling.
//!
//! Max pooling pads with −∞ and sends the gradient to the first maximum of each window in
//! row-major window order (PyTorch's choice among ties). Average pooling counts the zero padding
//! in the divisor (`count_include_pad=True`, PyTorch's default), so every window divides by the
//! full kernel volume.

use ndarray::{ArrayD, Axis, Dimension, IxDyn};

use super::window::{from_row_major, positions, prefixed, row_major, Window};
use crate::ir::{Pool, PoolKind};

/// `x: [N, C, *S]` → `[N, C, *S']`.
///
/// # Panics
/// If the input's rank disagrees with `pool` (the IR's shape checker prevents this).
pub fn forward(x: &ArrayD<f32>, pool: &Pool) -> ArrayD<f32> {
    let (window, y_shape) = geometry(x, pool);
    let x = row_major(x);
    let volume: usize = pool.kernel.iter().product();
    let mut y = vec![0f64; y_shape.iter().product()];
    for_each_window(&window, &y_shape, |y_at, sources| {
        y[y_at] = match pool.kind {
            PoolKind::Max => first_maximum(&x, sources).map_or(f64::NEG_INFINITY, |at| x[at]),
            PoolKind::Avg => sources.iter().flatten().map(|&at| x[at]).sum::<f64>() / volume as f64,
        };
    });
    from_row_major(&y_shape, y)
}

/// The gradient with respect to `x`, given the output gradient `gy: [N, C, *S']`.
///
/// # Panics
/// If the shapes disagree with `pool`.
pub fn backward(x: &ArrayD<f32>, pool: &Pool, gy: &ArrayD<f32>) -> ArrayD<f32> {
    let (window, y_shape) = geometry(x, pool);
    assert_eq!(gy.shape(), &y_shape[..], "pool: output gradient shape");
    let x_shape = x.shape().to_vec();
    let (x, gy) = (row_major(x), row_major(gy));
    let volume: usize = pool.kernel.iter().product();
    let mut gx = vec![0f64; x.len()];
    for_each_window(&window, &y_shape, |y_at, sources| match pool.kind {
        PoolKind::Max => {
            if let Some(at) = first_maximum(&x, sources) {
                gx[at] += gy[y_at];
            }
        }
        PoolKind::Avg => {
            for &at in sources.iter().flatten() {
                gx[at] += gy[y_at] / volume as f64;
            }
        }
    });
    from_row_major(&x_shape, gx)
}

/// Global average pooling: `[N, C, *S]` → `[N, C]`, the mean over every spatial position.
pub fn global_avg_forward(x: &ArrayD<f32>) -> ArrayD<f32> {
    let spatial = flattened_spatial(x);
    spatial
        .map_axis(Axis(2), |plane| {
            (plane.iter().map(|&v| v as f64).sum::<f64>() / plane.len() as f64) as f32
        })
        .into_dyn()
}

/// The gradient of [`global_avg_forward`]: each of the `ΠS` positions gets `gy / ΠS`.
pub fn global_avg_backward(input_shape: &[usize], gy: &ArrayD<f32>) -> ArrayD<f32> {
    assert_eq!(
        gy.shape(),
        &input_shape[..2],
        "global_avgpool: output gradient shape"
    );
    let area: usize = input_shape[2..].iter().product();
    let mut gx = ArrayD::zeros(IxDyn(input_shape));
    for ((n, c), &upstream) in gy.indexed_iter().map(|(at, v)| ((at[0], at[1]), v)) {
        gx.index_axis_mut(Axis(0), n)
            .index_axis_mut(Axis(0), c)
            .fill(upstream / area as f32);
    }
    gx
}

/// `[N, C, *S]` viewed as `[N, C, ΠS]`.
fn flattened_spatial(x: &ArrayD<f32>) -> ndarray::Array3<f32> {
    let (batch, channels) = (x.shape()[0], x.shape()[1]);
    let area = x.shape()[2..].iter().product();
    x.as_standard_layout()
        .into_owned()
        .into_shape_with_order((batch, channels, area))
        .expect("the element count is unchanged")
}

/// The sliding window of `pool` over `x` and the output shape `[N, C, *S']`.
fn geometry(x: &ArrayD<f32>, pool: &Pool) -> (Window, Vec<usize>) {
    let spatial_axes = pool.kernel.len();
    assert_eq!(x.ndim(), spatial_axes + 2, "pool: input rank");
    let window = Window {
        input: x.shape()[2..].to_vec(),
        kernel: pool.kernel.clone(),
        stride: pool.stride.clone(),
        dilation: vec![1; spatial_axes],
        padding: pool.padding.iter().map(|&p| (p, p)).collect(),
    };
    let y_shape = prefixed(x.shape()[0], x.shape()[1], &window.output());
    (window, y_shape)
}

/// Calls `visit(y_at, sources)` for every output element, with row-major offsets into
/// `y: [N, C, *S']` and `x: [N, C, *S]`; `sources` holds the offset read by each tap in
/// row-major tap order, `None` for taps in the padding.
fn for_each_window(
    window: &Window,
    y_shape: &[usize],
    mut visit: impl FnMut(usize, &[Option<usize>]),
) {
    let input_area: usize = window.input.iter().product();
    let output_area: usize = y_shape[2..].iter().product();
    for plane in 0..y_shape[0] * y_shape[1] {
        for (out_offset, out) in positions(&y_shape[2..]).enumerate() {
            let sources: Vec<Option<usize>> = window
                .taps()
                .map(|tap| {
                    window
                        .source(out.slice(), tap.slice())
                        .map(|at| plane * input_area + at)
                })
                .collect();
            visit(plane * output_area + out_offset, &sources);
        }
    }
}

/// The first source holding the window's maximum; padding counts as −∞, so it never wins
/// (padding is at most half the kernel, so every window holds a real element).
fn first_maximum(x: &[f64], sources: &[Option<usize>]) -> Option<usize> {
    let mut best: Option<usize> = None;
    for &at in sources.iter().flatten() {
        if best.is_none_or(|max_at| x[at] > x[max_at]) {
            best = Some(at);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::check::{
        assert_gradient_close, distinct, numeric_gradient, uniform, weighted_sum, Rng,
    };
    use proptest::prelude::*;

    fn pool(kind: PoolKind, kernel: Vec<usize>, stride: Vec<usize>, padding: Vec<usize>) -> Pool {
        Pool {
            kind,
            kernel,
            stride,
            padding,
        }
    }

    fn seed_image() -> ArrayD<f32> {
        ArrayD::from_shape_vec(IxDyn(&[1, 1, 3, 3]), (0..9).map(|v| v as f32).collect()).unwrap()
    }

    /// d2l 7.5: 2×2 pooling of X = [[0,1,2],[3,4,5],[6,7,8]], padding 0, stride 1.
    #[test]
    fn d2l_max_and_average_pooling() {
        let x = seed_image();
        let max = forward(&x, &pool(PoolKind::Max, vec![2, 2], vec![1, 1], vec![0, 0]));
        assert_eq!(max.into_raw_vec_and_offset().0, vec![4., 5., 7., 8.]);
        let avg = forward(&x, &pool(PoolKind::Avg, vec![2, 2], vec![1, 1], vec![0, 0]));
        assert_eq!(avg.into_raw_vec_and_offset().0, vec![2., 3., 5., 6.]);
    }

    #[test]
    fn padding_is_minus_infinity_for_max_and_zero_for_average() {
        let x = ArrayD::from_shape_vec(IxDyn(&[1, 1, 3]), vec![-1f32, -2., -3.]).unwrap();
        let max = forward(&x, &pool(PoolKind::Max, vec![2], vec![2], vec![1]));
        assert_eq!(max.into_raw_vec_and_offset().0, vec![-1., -2.]);
        let avg = forward(&x, &pool(PoolKind::Avg, vec![2], vec![2], vec![1]));
        assert_eq!(avg.into_raw_vec_and_offset().0, vec![-0.5, -2.5]);
    }

    #[test]
    fn max_gradient_goes_to_the_first_of_tied_maxima() {
        let x = ArrayD::from_shape_vec(IxDyn(&[1, 1, 2, 2]), vec![1f32, 5., 5., 5.]).unwrap();
        let p = pool(PoolKind::Max, vec![2, 2], vec![2, 2], vec![0, 0]);
        let gy = ArrayD::from_elem(IxDyn(&[1, 1, 1, 1]), 3f32);
        assert_eq!(
            backward(&x, &p, &gy).into_raw_vec_and_offset().0,
            vec![0., 3., 0., 0.]
        );
    }

    #[test]
    fn global_average_pooling_and_its_gradient() {
        let x = seed_image();
        assert_eq!(global_avg_forward(&x).into_raw_vec_and_offset().0, vec![4.]);
        let gy = ArrayD::from_elem(IxDyn(&[1, 1]), 9f32);
        assert_eq!(
            global_avg_backward(x.shape(), &gy),
            ArrayD::from_elem(x.raw_dim(), 1f32)
        );
        let mut rng = Rng::new(3);
        let x = uniform(&[2, 3, 2, 1, 3], &mut rng);
        let r = uniform(&[2, 3], &mut rng);
        let numeric = numeric_gradient(&x, |x| weighted_sum(&global_avg_forward(x), &r));
        assert_gradient_close(
            &global_avg_backward(x.shape(), &r),
            &numeric,
            "global_avgpool",
        );
    }

    /// Checks the input gradient against finite differences on distinct values (no ties, and
    /// no maximum changes place under a step).
    fn check_backward(p: &Pool, shape: &[usize], seed: u64) {
        let mut rng = Rng::new(seed);
        let x = distinct(shape, &mut rng);
        let r = uniform(forward(&x, p).shape(), &mut rng);
        let numeric = numeric_gradient(&x, |x| weighted_sum(&forward(x, p), &r));
        assert_gradient_close(&backward(&x, p, &r), &numeric, "pool input");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// Random 1-, 2- and 3-D pools of both kinds, with padding up to half the kernel.
        #[test]
        fn backward_matches_finite_differences(
            axes in prop::collection::vec((1..=3usize, 1..=3usize, 0..=1usize, 0..=2usize), 1..=3),
            max: bool,
            channels in 1..=2usize,
            seed: u64,
        ) {
            let kind = if max { PoolKind::Max } else { PoolKind::Avg };
            let padding: Vec<usize> = axes.iter().map(|&(k, _, p, _)| p.min(k / 2)).collect();
            let p = pool(kind, axes.iter().map(|a| a.0).collect(), axes.iter().map(|a| a.1).collect(), padding.clone());
            let mut shape = vec![2, channels];
            shape.extend(axes.iter().zip(&padding).map(|(&(k, _, _, extra), &pad)| (k - 2 * pad).max(1) + extra));
            check_backward(&p, &shape, seed);
        }
    }
}
