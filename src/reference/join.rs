//! Ops that join or reshape values without arithmetic of their own: concat on the channel axis,
//! element-wise add, and flatten. (Identity needs no code: the graph passes values through.)

use ndarray::{concatenate, ArrayD, ArrayViewD, Axis, IxDyn, Slice};

/// Joins `[N, C_i, *S]` inputs along the channel axis, in input order.
///
/// # Panics
/// If the inputs disagree on anything but channels (the IR's shape checker prevents this).
pub fn concat_forward(inputs: &[&ArrayD<f32>]) -> ArrayD<f32> {
    let views: Vec<ArrayViewD<f32>> = inputs.iter().map(|x| x.view()).collect();
    concatenate(Axis(1), &views).expect("concat: inputs agree on every axis but channels")
}

/// Splits `gy` back along the channel axis into one gradient per input, with the inputs'
/// channel counts.
pub fn concat_backward(channels: &[usize], gy: &ArrayD<f32>) -> Vec<ArrayD<f32>> {
    assert_eq!(
        channels.iter().sum::<usize>(),
        gy.shape()[1],
        "concat: output gradient channels"
    );
    let mut start = 0;
    channels
        .iter()
        .map(|&count| {
            let part = gy
                .slice_axis(Axis(1), Slice::from(start..start + count))
                .to_owned();
            start += count;
            part
        })
        .collect()
}

/// Element-wise sum of inputs of one shape. Its backward hands `gy` unchanged to every input.
pub fn add_forward(inputs: &[&ArrayD<f32>]) -> ArrayD<f32> {
    let (first, rest) = inputs.split_first().expect("add: at least one input");
    rest.iter().fold((*first).clone(), |sum, x| {
        assert_eq!(sum.shape(), x.shape(), "add: input shapes");
        sum + *x
    })
}

/// `[N, C, *S]` → `[N, C·ΠS]`, row-major (C, then each spatial axis), as `nn.Flatten`.
pub fn flatten_forward(x: &ArrayD<f32>) -> ArrayD<f32> {
    let batch = x.shape()[0];
    let features = x.len() / batch.max(1);
    reshape(x, &[batch, features])
}

/// The inverse reshape: `gy: [N, F]` → the input's shape.
pub fn flatten_backward(input_shape: &[usize], gy: &ArrayD<f32>) -> ArrayD<f32> {
    reshape(gy, input_shape)
}

fn reshape(x: &ArrayD<f32>, shape: &[usize]) -> ArrayD<f32> {
    x.as_standard_layout()
        .into_owned()
        .into_shape_with_order(IxDyn(shape))
        .unwrap_or_else(|_| panic!("flatten: cannot reshape {:?} to {shape:?}", x.shape()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counting(shape: &[usize], start: f32) -> ArrayD<f32> {
        let count = shape.iter().product::<usize>();
        ArrayD::from_shape_vec(IxDyn(shape), (0..count).map(|i| start + i as f32).collect())
            .unwrap()
    }

    #[test]
    fn concat_joins_channels_per_sample_and_splits_back() {
        let (a, b) = (counting(&[2, 1, 2], 0.), counting(&[2, 2, 2], 10.));
        let y = concat_forward(&[&a, &b]);
        // Sample 0 holds a's channel then b's two channels; sample 1 likewise.
        let expected = vec![0., 1., 10., 11., 12., 13., 2., 3., 14., 15., 16., 17.];
        assert_eq!(y.shape(), &[2, 3, 2]);
        assert_eq!(y.iter().copied().collect::<Vec<f32>>(), expected);
        assert_eq!(concat_backward(&[1, 2], &y), vec![a, b]);
    }

    #[test]
    fn add_sums_every_input() {
        let (a, b, c) = (
            counting(&[1, 3], 0.),
            counting(&[1, 3], 1.),
            counting(&[1, 3], 2.),
        );
        assert_eq!(
            add_forward(&[&a, &b, &c]).into_raw_vec_and_offset().0,
            vec![3., 6., 9.]
        );
    }

    #[test]
    fn flatten_is_row_major_channels_first_and_reverses() {
        // A transposed view, so that flatten must follow logical order, not memory order:
        // x[n, c, s] = 6n + 2s + c.
        let x = counting(&[2, 3, 2], 0.).permuted_axes(IxDyn(&[0, 2, 1]));
        let y = flatten_forward(&x);
        assert_eq!(y.shape(), &[2, 6]);
        assert_eq!(
            y.index_axis(Axis(0), 1)
                .iter()
                .copied()
                .collect::<Vec<f32>>(),
            vec![6., 8., 10., 7., 9., 11.]
        );
        assert_eq!(flatten_backward(x.shape(), &y), x);
    }
}
