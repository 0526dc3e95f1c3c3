//! A [`ShapeError`] of a single-input op as a diagnostic: a sentence, a label on the argument
//! responsible (`kernel`, `padding`, `groups`) or on the op, and where the input came from.

use std::collections::HashMap;

use super::InputSite;
use crate::diag::{Code, Diagnostic};
use crate::ir::shape::ShapeError;
use crate::ir::Op;
use crate::limits::MAX_ELEMENTS;
use crate::span::Span;

/// A shape error of a single-input op as a diagnostic.
pub(super) fn shape_error(
    err: &ShapeError,
    op: &Op,
    spans: &HashMap<&str, Span>,
    input: &InputSite,
    stmt: Span,
    name: Span,
) -> Diagnostic {
    let at = |param: &str| spans.get(param).copied().unwrap_or(stmt);
    let axis_name = |axis: usize| format!("spatial axis {}", axis + 1);
    let d = match err {
        ShapeError::KernelTooLarge {
            axis,
            extent,
            padded,
        } => {
            let kernel = match op {
                Op::Conv(c) => c.kernel[*axis],
                Op::Pool(p) => p.kernel[*axis],
                _ => *extent,
            };
            let what = if kernel == *extent {
                format!("the kernel {kernel}")
            } else {
                format!("the dilated kernel (kernel {kernel} spans {extent})")
            };
            Diagnostic::error(
                Code::KernelTooLarge,
                format!("{what} is larger than the padded input {padded}"),
            )
            .label(
                at("kernel"),
                format!("kernel {kernel} on {}", axis_name(*axis)),
            )
        }
        ShapeError::PaddingTooLarge {
            axis,
            padding,
            kernel,
        } => Diagnostic::error(
            Code::PaddingTooLarge,
            format!("pooling padding {padding} is more than half the kernel {kernel}"),
        )
        .label(
            at("padding"),
            format!("padding {padding} on {}", axis_name(*axis)),
        )
        .note("PyTorch allows pooling padding up to kernel/2"),
        ShapeError::GroupsMismatch {
            channels,
            groups,
            output,
        } => {
            let which = if *output { "output" } else { "input" };
            Diagnostic::error(
                Code::GroupsMismatch,
                format!("{which} channels {channels} are not divisible by groups {groups}"),
            )
            .label(at("groups"), format!("{groups} groups"))
        }
        ShapeError::DenseOnSpatial { found } => Diagnostic::error(
            Code::DenseOnSpatial,
            format!("`dense` needs a vector, but the input is {found}"),
        )
        .label(name, "applied to a feature map")
        .help("add `flatten` (or `global_avgpool`) before `dense`"),
        ShapeError::WrongRank { found, .. } => Diagnostic::error(
            Code::WrongRank,
            format!("this op needs spatial axes, but the input is {found}"),
        )
        .label(name, "needs `[channels, spatial...]`"),
        ShapeError::TooLarge => Diagnostic::error(
            Code::TooLarge,
            format!("the output of this layer has more than {MAX_ELEMENTS} elements per image"),
        )
        .label(stmt, "too large"),
        ShapeError::InputMismatch { .. }
        | ShapeError::BranchMismatch { .. }
        | ShapeError::Arity { .. } => Diagnostic::error(
            Code::WrongRank,
            format!("this op cannot take the input {}", input.shape),
        )
        .label(stmt, "here"),
    };
    if input.is_network_input {
        d.note(format!(
            "the input to this layer is the network input {}",
            input.shape
        ))
    } else {
        d.label(
            input.span,
            format!("this layer made the input {}", input.shape),
        )
    }
}
