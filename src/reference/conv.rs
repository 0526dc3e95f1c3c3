//! Convolution (`nn.ConvNd`: cross-correlation) over 1, 2 or 3 spatial axes with stride,
//! `(before, after)` zero padding, dilation and groups — one dimension-generic implementation.
//!
//! Forward and backward walk the very same list of products `y[n, o, p] += x[n, i, q] · w[o, i', t]`
//! (see [`for_each_product`]), so the backward is the forward read in the other direction:
//! `gx[n, i, q] += gy[n, o, p] · w[o, i', t]` and `gw[o, i', t] += gy[n, o, p] · x[n, i, q]`.
//! Sums are accumulated in f64 so that the oracle's own rounding is negligible; the tensors are
//! read as flat row-major buffers, so each product is three offset computations.

use ndarray::{ArrayD, Axis, Dimension};

use super::window::{from_row_major, positions, prefixed, row_major, Window};
use crate::ir::Conv;

/// Gradients of a convolution with respect to its input and parameters.
#[derive(Clone, Debug)]
pub struct ConvGrads {
    /// `[N, in, *S]`
    pub input: ArrayD<f32>,
    /// `[out, in/groups, *kernel]`
    pub weight: ArrayD<f32>,
    /// `[out]`, when the convolution has a bias.
    pub bias: Option<ArrayD<f32>>,
}

/// `x: [N, in, *S]`, `weight: [out, in/groups, *kernel]`, `bias: [out]` → `[N, out, *S']`.
///
/// # Panics
/// If the tensors' shapes disagree with `conv` (the IR's shape checker prevents this).
pub fn forward(
    x: &ArrayD<f32>,
    weight: &ArrayD<f32>,
    bias: Option<&ArrayD<f32>>,
    conv: &Conv,
) -> ArrayD<f32> {
    let geometry = Geometry::new(x, weight, conv);
    let (x, weight) = (row_major(x), row_major(weight));
    let mut y = vec![0f64; geometry.y_shape.iter().product()];
    geometry.for_each_product(|y_at, x_at, w_at| y[y_at] += x[x_at] * weight[w_at]);
    if let Some(bias) = bias {
        // y is row-major [N, out, *S']: plane p holds output channel p mod out.
        let output_area: usize = geometry.y_shape[2..].iter().product();
        for (plane, values) in y.chunks_mut(output_area).enumerate() {
            let b = bias[plane % conv.out_channels] as f64;
            values.iter_mut().for_each(|v| *v += b);
        }
    }
    from_row_major(&geometry.y_shape, y)
}

/// Gradients given the forward's input `x`, `weight` and the output gradient `gy: [N, out, *S']`.
/// The bias gradient is computed when `conv.bias` is set.
///
/// # Panics
/// If the tensors' shapes disagree with `conv`.
pub fn backward(x: &ArrayD<f32>, weight: &ArrayD<f32>, conv: &Conv, gy: &ArrayD<f32>) -> ConvGrads {
    let geometry = Geometry::new(x, weight, conv);
    assert_eq!(
        gy.shape(),
        &geometry.y_shape[..],
        "conv: output gradient shape"
    );
    let (x_shape, w_shape) = (x.shape().to_vec(), weight.shape().to_vec());
    let (x, weight, gy_flat) = (row_major(x), row_major(weight), row_major(gy));
    let mut gx = vec![0f64; x.len()];
    let mut gw = vec![0f64; weight.len()];
    geometry.for_each_product(|y_at, x_at, w_at| {
        gx[x_at] += gy_flat[y_at] * weight[w_at];
        gw[w_at] += gy_flat[y_at] * x[x_at];
    });
    let bias = conv.bias.map(|_| {
        let sums = gy
            .axis_iter(Axis(1))
            .map(|plane| plane.iter().map(|&v| v as f64).sum())
            .collect();
        from_row_major(&[conv.out_channels], sums)
    });
    ConvGrads {
        input: from_row_major(&x_shape, gx),
        weight: from_row_major(&w_shape, gw),
        bias,
    }
}

/// Everything needed to enumerate a convolution's products.
struct Geometry<'a> {
    conv: &'a Conv,
    window: Window,
    /// `[N, out, *S']`
    y_shape: Vec<usize>,
}

impl<'a> Geometry<'a> {
    fn new(x: &ArrayD<f32>, weight: &ArrayD<f32>, conv: &'a Conv) -> Geometry<'a> {
        let spatial_axes = conv.kernel.len();
        assert_eq!(x.ndim(), spatial_axes + 2, "conv: input rank");
        assert_eq!(x.shape()[1], conv.in_channels, "conv: input channels");
        let weight_shape = prefixed(
            conv.out_channels,
            conv.in_channels / conv.groups,
            &conv.kernel,
        );
        assert_eq!(weight.shape(), &weight_shape[..], "conv: weight shape");
        let window = Window {
            input: x.shape()[2..].to_vec(),
            kernel: conv.kernel.clone(),
            stride: conv.stride.clone(),
            dilation: conv.dilation.clone(),
            padding: conv.padding.clone(),
        };
        let y_shape = prefixed(x.shape()[0], conv.out_channels, &window.output());
        Geometry {
            conv,
            window,
            y_shape,
        }
    }

    /// Calls `product(y_at, x_at, w_at)` once for every multiply of the convolution that does
    /// not read padding, with row-major offsets into `y: [N, out, *S']`, `x: [N, in, *S]` and
    /// `w: [out, in/groups, *kernel]`. Output channel `o` belongs to group `o / (out/groups)`
    /// and reads only that group's input channels.
    fn for_each_product(&self, mut product: impl FnMut(usize, usize, usize)) {
        let conv = self.conv;
        let in_per_group = conv.in_channels / conv.groups;
        let out_per_group = conv.out_channels / conv.groups;
        let input_area: usize = self.window.input.iter().product();
        let output_area: usize = self.y_shape[2..].iter().product();
        let kernel_volume: usize = conv.kernel.iter().product();
        for n in 0..self.y_shape[0] {
            for out_channel in 0..conv.out_channels {
                let group = out_channel / out_per_group;
                for (out_offset, out) in positions(&self.y_shape[2..]).enumerate() {
                    let y_at = (n * conv.out_channels + out_channel) * output_area + out_offset;
                    for (tap_offset, tap) in self.window.taps().enumerate() {
                        let Some(source) = self.window.source(out.slice(), tap.slice()) else {
                            continue;
                        };
                        for channel_in_group in 0..in_per_group {
                            let in_channel = group * in_per_group + channel_in_group;
                            let x_at = (n * conv.in_channels + in_channel) * input_area + source;
                            let w_at = (out_channel * in_per_group + channel_in_group)
                                * kernel_volume
                                + tap_offset;
                            product(y_at, x_at, w_at);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::ParamId;
    use crate::reference::check::{
        assert_gradient_close, numeric_gradient, uniform, weighted_sum, Rng,
    };
    use ndarray::{arr1, arr2, stack, Array, ArrayD, IxDyn};
    use proptest::prelude::*;

    /// A convolution with every hyper-parameter given per axis.
    struct Case {
        batch: usize,
        in_channels: usize,
        out_channels: usize,
        groups: usize,
        input: Vec<usize>,
        kernel: Vec<usize>,
        stride: Vec<usize>,
        dilation: Vec<usize>,
        padding: Vec<(usize, usize)>,
        bias: bool,
    }

    impl Case {
        fn conv(&self) -> Conv {
            Conv {
                in_channels: self.in_channels,
                out_channels: self.out_channels,
                kernel: self.kernel.clone(),
                stride: self.stride.clone(),
                padding: self.padding.clone(),
                dilation: self.dilation.clone(),
                groups: self.groups,
                weight: ParamId(0),
                bias: self.bias.then_some(ParamId(1)),
            }
        }

        /// Checks input, weight and bias gradients against finite differences.
        fn check_backward(&self, seed: u64) {
            let conv = self.conv();
            let mut rng = Rng::new(seed);
            let x = uniform(
                &prefixed(self.batch, self.in_channels, &self.input),
                &mut rng,
            );
            let w_shape = prefixed(
                self.out_channels,
                self.in_channels / self.groups,
                &self.kernel,
            );
            let w = uniform(&w_shape, &mut rng);
            let b = uniform(&[self.out_channels], &mut rng);
            let bias = self.bias.then_some(&b);
            let r = uniform(forward(&x, &w, bias, &conv).shape(), &mut rng);
            let grads = backward(&x, &w, &conv, &r);

            let gx = numeric_gradient(&x, |x| weighted_sum(&forward(x, &w, bias, &conv), &r));
            assert_gradient_close(&grads.input, &gx, "conv input");
            let gw = numeric_gradient(&w, |w| weighted_sum(&forward(&x, w, bias, &conv), &r));
            assert_gradient_close(&grads.weight, &gw, "conv weight");
            match grads.bias {
                Some(gb) => {
                    let numeric = numeric_gradient(&b, |b| {
                        weighted_sum(&forward(&x, &w, Some(b), &conv), &r)
                    });
                    assert_gradient_close(&gb, &numeric, "conv bias");
                }
                None => assert!(!self.bias, "a bias gradient without a bias"),
            }
        }
    }

    fn image(rows: Vec<[f32; 3]>) -> ArrayD<f32> {
        Array::from(rows).into_dyn()
    }

    fn plain(kernel: Vec<usize>, in_channels: usize, out_channels: usize) -> Conv {
        let axes = kernel.len();
        Case {
            batch: 1,
            in_channels,
            out_channels,
            groups: 1,
            input: vec![],
            kernel,
            stride: vec![1; axes],
            dilation: vec![1; axes],
            padding: vec![(0, 0); axes],
            bias: false,
        }
        .conv()
    }

    /// d2l 7.2: the cross-correlation of X = [[0,1,2],[3,4,5],[6,7,8]] with K = [[0,1],[2,3]].
    #[test]
    fn d2l_cross_correlation() {
        let x = image(vec![[0., 1., 2.], [3., 4., 5.], [6., 7., 8.]])
            .into_shape_with_order(IxDyn(&[1, 1, 3, 3]))
            .unwrap();
        let k = arr2(&[[0f32, 1.], [2., 3.]])
            .into_dyn()
            .into_shape_with_order(IxDyn(&[1, 1, 2, 2]))
            .unwrap();
        let y = forward(&x, &k, None, &plain(vec![2, 2], 1, 1));
        assert_eq!(y.into_raw_vec_and_offset().0, vec![19., 25., 37., 43.]);
    }

    /// d2l 7.4: two input channels, X and X + 1, with K and K + 1.
    #[test]
    fn d2l_two_input_channels() {
        let x0 = arr2(&[[0f32, 1., 2.], [3., 4., 5.], [6., 7., 8.]]);
        let k0 = arr2(&[[0f32, 1.], [2., 3.]]);
        let x = stack(Axis(0), &[x0.view(), (&x0 + 1.).view()])
            .unwrap()
            .insert_axis(Axis(0))
            .into_dyn();
        let k = stack(Axis(0), &[k0.view(), (&k0 + 1.).view()])
            .unwrap()
            .insert_axis(Axis(0))
            .into_dyn();
        let y = forward(&x, &k, None, &plain(vec![2, 2], 2, 1));
        assert_eq!(y.into_raw_vec_and_offset().0, vec![56., 72., 104., 120.]);
    }

    #[test]
    fn padding_stride_dilation_and_bias_in_one_dimension() {
        let x = arr1(&[1f32, 2., 3., 4., 5.])
            .into_shape_with_order(IxDyn(&[1, 1, 5]))
            .unwrap();
        let w = arr1(&[1f32, -1.])
            .into_shape_with_order(IxDyn(&[1, 1, 2]))
            .unwrap();
        let b = arr1(&[10f32]).into_dyn();
        let mut conv = plain(vec![2], 1, 1);
        // Padded [0, 1, 2, 3, 4, 5, 0, 0], stride 3: windows at 0, 3, 6 → 0−1, 3−4, 0−0,
        // then `+ 10`.
        conv.padding = vec![(1, 2)];
        conv.stride = vec![3];
        assert_eq!(
            forward(&x, &w, Some(&b), &conv).into_raw_vec_and_offset().0,
            vec![9., 9., 10.]
        );
        // Dilation 2 pairs x[i] with x[i + 2]: 1−3, 2−4, 3−5.
        let mut dilated = plain(vec![2], 1, 1);
        dilated.dilation = vec![2];
        assert_eq!(
            forward(&x, &w, None, &dilated).into_raw_vec_and_offset().0,
            vec![-2., -2., -2.]
        );
    }

    #[test]
    fn groups_keep_channels_apart() {
        // Two groups of one channel each: output 0 sees only channel 0, output 1 only channel 1.
        let x = ArrayD::from_shape_vec(IxDyn(&[1, 2, 2]), vec![1f32, 2., 30., 40.]).unwrap();
        let w = ArrayD::from_shape_vec(IxDyn(&[2, 1, 1]), vec![2f32, -1.]).unwrap();
        let mut conv = plain(vec![1], 2, 2);
        conv.groups = 2;
        assert_eq!(
            forward(&x, &w, None, &conv).into_raw_vec_and_offset().0,
            vec![2., 4., -30., -40.]
        );
    }

    #[test]
    fn backward_matches_finite_differences_in_two_dimensions() {
        Case {
            batch: 2,
            in_channels: 4,
            out_channels: 2,
            groups: 2,
            input: vec![6, 5],
            kernel: vec![3, 2],
            stride: vec![2, 1],
            dilation: vec![1, 2],
            padding: vec![(1, 1), (0, 1)],
            bias: true,
        }
        .check_backward(1);
    }

    #[test]
    fn backward_matches_finite_differences_in_three_dimensions() {
        Case {
            batch: 1,
            in_channels: 2,
            out_channels: 2,
            groups: 1,
            input: vec![3, 4, 3],
            kernel: vec![2, 3, 2],
            stride: vec![1, 2, 1],
            dilation: vec![2, 1, 1],
            padding: vec![(1, 1), (1, 1), (0, 1)],
            bias: true,
        }
        .check_backward(2);
    }

    /// Per axis: kernel, stride, dilation, padding before and after, and how much larger than
    /// the smallest valid size the input is.
    fn axis() -> impl Strategy<Value = (usize, usize, usize, usize, usize, usize)> {
        (
            1..=3usize,
            1..=2usize,
            1..=2usize,
            0..=1usize,
            0..=1usize,
            0..=2usize,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Random 1-, 2- and 3-D convolutions; the input's size per axis is the smallest the
        /// dilated kernel fits in plus 0–2, which keeps the finite differences cheap.
        #[test]
        fn backward_matches_finite_differences(
            axes in prop::collection::vec(axis(), 1..=3),
            groups in 1..=2usize,
            in_per_group in 1..=2usize,
            out_per_group in 1..=2usize,
            batch in 1..=2usize,
            bias: bool,
            seed: u64,
        ) {
            let span = |&(k, _, d, _, _, _): &(usize, usize, usize, usize, usize, usize)| d * (k - 1) + 1;
            let case = Case {
                batch,
                in_channels: groups * in_per_group,
                out_channels: groups * out_per_group,
                groups,
                input: axes.iter().map(|a| (span(a).saturating_sub(a.3 + a.4)).max(1) + a.5).collect(),
                kernel: axes.iter().map(|a| a.0).collect(),
                stride: axes.iter().map(|a| a.1).collect(),
                dilation: axes.iter().map(|a| a.2).collect(),
                padding: axes.iter().map(|a| (a.3, a.4)).collect(),
                bias,
            };
            case.check_backward(seed);
        }
    }
}
