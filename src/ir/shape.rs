//! The shape rule of every op, one `match` arm each, and the one output-size function that
//! convolution and pooling share. `ir::build` calls [`infer`] when it appends a node (so an
//! ill-shaped graph cannot be built) and `ir::verify` calls it again to check a graph.

use super::{Op, Shape};
use crate::limits::MAX_ELEMENTS;

/// Why an op cannot take its inputs. `ir::build` turns each into a diagnostic that points at
/// the argument responsible.
#[derive(Clone, Debug, PartialEq)]
pub enum ShapeError {
    /// The op needs `[C, *spatial]` with this many spatial axes (`None`: at least one).
    WrongRank {
        expected: Option<usize>,
        found: Shape,
    },
    /// On spatial axis `axis`, the dilated kernel spans `extent` but the padded input is `padded`.
    KernelTooLarge {
        axis: usize,
        extent: usize,
        padded: usize,
    },
    /// Pooling padding above half the kernel on `axis`.
    PaddingTooLarge {
        axis: usize,
        padding: usize,
        kernel: usize,
    },
    /// `channels` (of the input or the output) is not a multiple of `groups`.
    GroupsMismatch {
        channels: usize,
        groups: usize,
        output: bool,
    },
    /// An op's recorded input size disagrees with the input it is given.
    InputMismatch { expected: usize, found: Shape },
    /// `dense` on an input that still has spatial axes.
    DenseOnSpatial { found: Shape },
    /// Input `index` of a `concat`/`add` disagrees with input 0.
    BranchMismatch {
        index: usize,
        first: Shape,
        other: Shape,
    },
    /// The output would have more than [`MAX_ELEMENTS`] elements.
    TooLarge,
    /// An op got the wrong number of inputs (only a malformed graph can do this).
    Arity { expected: usize, found: usize },
}

/// `floor((input + pad_before + pad_after − dilation·(kernel − 1) − 1) / stride) + 1`: the
/// output size of one spatial axis of a convolution or pooling window (PyTorch's formula,
/// floor mode). `None` when the dilated kernel does not fit the padded input.
pub fn window_output_size(
    input: usize,
    kernel: usize,
    stride: usize,
    padding: (usize, usize),
    dilation: usize,
) -> Result<usize, (usize, usize)> {
    let padded = input.saturating_add(padding.0).saturating_add(padding.1);
    let extent = dilation
        .saturating_mul(kernel.saturating_sub(1))
        .saturating_add(1);
    if extent > padded || stride == 0 {
        return Err((extent, padded));
    }
    Ok((padded - extent) / stride + 1)
}

/// The output shape of `op` applied to `inputs`.
pub fn infer(op: &Op, inputs: &[&Shape]) -> Result<Shape, ShapeError> {
    let shape = match op {
        Op::Input => {
            return Err(ShapeError::Arity {
                expected: 0,
                found: inputs.len(),
            })
        }
        Op::Conv(conv) => {
            let input = single(inputs)?;
            spatial_rank(input, conv.kernel.len())?;
            if input.channels() != conv.in_channels {
                return Err(ShapeError::InputMismatch {
                    expected: conv.in_channels,
                    found: input.clone(),
                });
            }
            for (channels, output) in [(conv.in_channels, false), (conv.out_channels, true)] {
                if conv.groups == 0 || channels % conv.groups != 0 {
                    return Err(ShapeError::GroupsMismatch {
                        channels,
                        groups: conv.groups,
                        output,
                    });
                }
            }
            let mut dims = vec![conv.out_channels];
            for (axis, &size) in input.spatial().iter().enumerate() {
                let out = window_output_size(
                    size,
                    conv.kernel[axis],
                    conv.stride[axis],
                    conv.padding[axis],
                    conv.dilation[axis],
                )
                .map_err(|(extent, padded)| ShapeError::KernelTooLarge {
                    axis,
                    extent,
                    padded,
                })?;
                dims.push(out);
            }
            Shape(dims)
        }
        Op::Pool(pool) => {
            let input = single(inputs)?;
            spatial_rank(input, pool.kernel.len())?;
            let mut dims = vec![input.channels()];
            for (axis, &size) in input.spatial().iter().enumerate() {
                let (kernel, padding) = (pool.kernel[axis], pool.padding[axis]);
                if padding > kernel / 2 {
                    return Err(ShapeError::PaddingTooLarge {
                        axis,
                        padding,
                        kernel,
                    });
                }
                let out =
                    window_output_size(size, kernel, pool.stride[axis], (padding, padding), 1)
                        .map_err(|(extent, padded)| ShapeError::KernelTooLarge {
                            axis,
                            extent,
                            padded,
                        })?;
                dims.push(out);
            }
            Shape(dims)
        }
        Op::GlobalAvgPool => {
            let input = single(inputs)?;
            if input.rank() < 2 {
                return Err(ShapeError::WrongRank {
                    expected: None,
                    found: input.clone(),
                });
            }
            Shape(vec![input.channels()])
        }
        Op::Flatten => Shape(vec![single(inputs)?.numel()]),
        Op::Dense(dense) => {
            let input = single(inputs)?;
            if input.rank() != 1 {
                return Err(ShapeError::DenseOnSpatial {
                    found: input.clone(),
                });
            }
            if input.0[0] != dense.in_features {
                return Err(ShapeError::InputMismatch {
                    expected: dense.in_features,
                    found: input.clone(),
                });
            }
            Shape(vec![dense.units])
        }
        Op::BatchNorm(bn) => {
            let input = single(inputs)?;
            if input.channels() != bn.channels {
                return Err(ShapeError::InputMismatch {
                    expected: bn.channels,
                    found: input.clone(),
                });
            }
            input.clone()
        }
        Op::Activation(_) | Op::Dropout { .. } | Op::Identity => single(inputs)?.clone(),
        Op::Concat => {
            let first = inputs.first().ok_or(ShapeError::Arity {
                expected: 1,
                found: 0,
            })?;
            let mut channels = 0usize;
            for (index, other) in inputs.iter().enumerate() {
                if other.rank() != first.rank() || other.spatial() != first.spatial() {
                    return Err(ShapeError::BranchMismatch {
                        index,
                        first: (*first).clone(),
                        other: (*other).clone(),
                    });
                }
                channels = channels
                    .checked_add(other.channels())
                    .ok_or(ShapeError::TooLarge)?;
            }
            let mut dims = first.0.clone();
            dims[0] = channels;
            Shape(dims)
        }
        Op::Add => {
            let first = inputs.first().ok_or(ShapeError::Arity {
                expected: 1,
                found: 0,
            })?;
            if let Some((index, other)) = inputs.iter().enumerate().find(|(_, s)| *s != first) {
                return Err(ShapeError::BranchMismatch {
                    index,
                    first: (*first).clone(),
                    other: (*other).clone(),
                });
            }
            (*first).clone()
        }
    };
    match checked_numel(&shape.0) {
        Some(n) if n <= MAX_ELEMENTS => Ok(shape),
        _ => Err(ShapeError::TooLarge),
    }
}

/// The product of `dims`, or `None` on overflow.
pub fn checked_numel(dims: &[usize]) -> Option<usize> {
    dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

fn single<'a>(inputs: &[&'a Shape]) -> Result<&'a Shape, ShapeError> {
    match inputs {
        [one] => Ok(one),
        _ => Err(ShapeError::Arity {
            expected: 1,
            found: inputs.len(),
        }),
    }
}

fn spatial_rank(input: &Shape, expected: usize) -> Result<(), ShapeError> {
    if input.rank() != expected + 1 || expected == 0 {
        return Err(ShapeError::WrongRank {
            expected: Some(expected),
            found: input.clone(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Pool, PoolKind};

    #[test]
    fn window_output_size_matches_pytorch() {
        // LeNet: 28 with padding 2, kernel 5 → 28; AlexNet's first conv: 224, k11, s4, p1 → 54.
        assert_eq!(window_output_size(28, 5, 1, (2, 2), 1), Ok(28));
        assert_eq!(window_output_size(224, 11, 4, (1, 1), 1), Ok(54));
        assert_eq!(window_output_size(7, 3, 1, (0, 0), 3), Ok(1));
        assert_eq!(window_output_size(4, 5, 1, (0, 0), 1), Err((5, 4)));
    }

    #[test]
    fn pooling_rejects_padding_over_half_the_kernel() {
        let pool = Op::Pool(Pool {
            kind: PoolKind::Max,
            kernel: vec![2],
            stride: vec![2],
            padding: vec![2],
        });
        let err = infer(&pool, &[&Shape(vec![3, 10])]).unwrap_err();
        assert_eq!(
            err,
            ShapeError::PaddingTooLarge {
                axis: 0,
                padding: 2,
                kernel: 2
            }
        );
    }

    #[test]
    fn concat_sums_channels_and_add_needs_equal_shapes() {
        let a = Shape(vec![64, 12, 12]);
        let b = Shape(vec![32, 12, 12]);
        assert_eq!(infer(&Op::Concat, &[&a, &b]), Ok(Shape(vec![96, 12, 12])));
        assert!(matches!(
            infer(&Op::Add, &[&a, &b]),
            Err(ShapeError::BranchMismatch { index: 1, .. })
        ));
    }
}
