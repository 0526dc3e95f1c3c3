//! The sliding-window geometry shared by convolution and pooling: for an output position and a
//! kernel tap, which input position is read (or that the tap falls in the zero/−∞ padding).
//!
//! The reference computes its own output sizes from the hyper-parameters rather than trusting
//! the node shapes, so that a wrong shape rule in `ir::shape` shows up as a disagreement.

use ndarray::{indices, ArrayD, IxDyn};

/// A window sliding over the spatial axes; every vector has one entry per spatial axis.
#[derive(Clone, Debug)]
pub struct Window {
    /// Spatial sizes of the input, without batch and channel axes.
    pub input: Vec<usize>,
    pub kernel: Vec<usize>,
    pub stride: Vec<usize>,
    pub dilation: Vec<usize>,
    /// `(before, after)` padding per axis.
    pub padding: Vec<(usize, usize)>,
}

impl Window {
    /// Spatial output sizes: `floor((in + before + after − dilation·(kernel − 1) − 1) / stride) + 1`
    /// per axis (LANGUAGE.md, PyTorch's floor mode).
    ///
    /// # Panics
    /// If a dilated kernel is larger than the padded input, which the shape checker rejects.
    pub fn output(&self) -> Vec<usize> {
        (0..self.input.len())
            .map(|axis| {
                let (before, after) = self.padding[axis];
                let padded = self.input[axis] + before + after;
                let span = self.dilation[axis] * (self.kernel[axis] - 1) + 1;
                assert!(
                    span <= padded,
                    "axis {axis}: kernel span {span} exceeds the padded input {padded}"
                );
                (padded - span) / self.stride[axis] + 1
            })
            .collect()
    }

    /// The row-major offset, within the input's spatial grid, of the position read by kernel
    /// tap `tap` at output position `out`; `None` when the tap lands in the padding.
    pub fn source(&self, out: &[usize], tap: &[usize]) -> Option<usize> {
        let mut offset = 0;
        for axis in 0..self.input.len() {
            let padded_position = out[axis] * self.stride[axis] + tap[axis] * self.dilation[axis];
            let position = padded_position.checked_sub(self.padding[axis].0)?;
            if position >= self.input[axis] {
                return None;
            }
            offset = offset * self.input[axis] + position;
        }
        Some(offset)
    }

    /// Every tap of the kernel, in row-major order.
    pub fn taps(&self) -> impl Iterator<Item = IxDyn> {
        indices(IxDyn(&self.kernel)).into_iter()
    }
}

/// `[a, b, *rest]`: a shape with batch and channel (or out and in channels) in front.
pub fn prefixed(a: usize, b: usize, rest: &[usize]) -> Vec<usize> {
    let mut shape = Vec::with_capacity(rest.len() + 2);
    shape.push(a);
    shape.push(b);
    shape.extend_from_slice(rest);
    shape
}

/// The elements of `a` in row-major (logical) order, widened to f64, whatever its memory layout:
/// the reference indexes flat buffers with row-major offsets.
pub fn row_major(a: &ArrayD<f32>) -> Vec<f64> {
    a.iter().map(|&v| v as f64).collect()
}

/// A row-major f64 buffer back into an f32 tensor of `shape`.
pub fn from_row_major(shape: &[usize], values: Vec<f64>) -> ArrayD<f32> {
    let narrowed = values.into_iter().map(|v| v as f32).collect();
    ArrayD::from_shape_vec(IxDyn(shape), narrowed)
        .expect("the buffer has the shape's element count")
}

/// Every position of a spatial grid, in row-major order.
pub fn positions(sizes: &[usize]) -> impl Iterator<Item = IxDyn> {
    indices(IxDyn(sizes)).into_iter()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(
        input: usize,
        kernel: usize,
        stride: usize,
        dilation: usize,
        pad: (usize, usize),
    ) -> Window {
        Window {
            input: vec![input],
            kernel: vec![kernel],
            stride: vec![stride],
            dilation: vec![dilation],
            padding: vec![pad],
        }
    }

    #[test]
    fn output_size_follows_the_language_formula() {
        // d2l 7.3: 8 + 2·1 − 3 + 1 = 8; with stride 2: floor((8 + 2 − 3) / 2) + 1 = 4.
        assert_eq!(window(8, 3, 1, 1, (1, 1)).output(), vec![8]);
        assert_eq!(window(8, 3, 2, 1, (1, 1)).output(), vec![4]);
        // Dilation 2 makes a 3-tap kernel span 5: 7 − 5 + 1 = 3.
        assert_eq!(window(7, 3, 1, 2, (0, 0)).output(), vec![3]);
        // Asymmetric `same` padding of an even kernel: 5 + 0 + 1 − 2 + 1 = 5.
        assert_eq!(window(5, 2, 1, 1, (0, 1)).output(), vec![5]);
    }

    #[test]
    fn taps_in_the_padding_have_no_source() {
        let w = window(4, 3, 2, 1, (1, 1));
        assert_eq!(w.source(&[0], &[0]), None);
        assert_eq!(w.source(&[0], &[1]), Some(0));
        assert_eq!(w.source(&[1], &[2]), Some(3));
        let after = window(4, 2, 1, 1, (0, 1));
        assert_eq!(after.source(&[3], &[1]), None);
    }

    #[test]
    fn sources_are_row_major_offsets_in_the_input_grid() {
        // A 3×4 input, 2×2 kernel, stride 2, padding 1: output (1, 1), tap (1, 0) reads
        // padded (3, 2) = input (2, 1), offset 2·4 + 1.
        let w = Window {
            input: vec![3, 4],
            kernel: vec![2, 2],
            stride: vec![2, 2],
            dilation: vec![1, 1],
            padding: vec![(1, 1), (1, 1)],
        };
        assert_eq!(w.source(&[1, 1], &[1, 0]), Some(9));
        assert_eq!(w.source(&[0, 1], &[0, 1]), None);
    }
}
