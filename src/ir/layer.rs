//! One op statement → a resolved [`Op`]: the argument table of every op (one `match` arm
//! each), value checks (types, signs, tuple arity, `padding=same`), and the translation of a
//! [`ShapeError`](shape::ShapeError) into a diagnostic that points at the argument responsible (in
//! `layer/shape_error.rs`).

mod shape_error;

use std::collections::HashMap;

use super::args::{bind, missing, BoundArg, EvalArg};
use super::eval::{expect_int, not_a_number, Scope, Value};
use super::shape;
use super::*;
use crate::diag::{self, Code, Diagnostic};
use crate::limits::MAX_ELEMENTS;
use crate::syntax::ast::Ident;
use shape_error::shape_error;

/// Every op a statement can name.
pub const OPS: [&str; 14] = [
    "conv",
    "maxpool",
    "avgpool",
    "global_avgpool",
    "flatten",
    "dense",
    "relu",
    "leaky_relu",
    "sigmoid",
    "tanh",
    "softmax",
    "dropout",
    "batchnorm",
    "identity",
];

/// An op with its output shape and the parameters it owns, ready to append.
pub struct Resolved {
    pub op: Op,
    pub shape: Shape,
    /// `(kind, shape)` in the order of the ids the op refers to.
    pub params: Vec<(ParamKind, Vec<usize>)>,
}

/// Where the producer of a layer's input is, for "this layer made the input ..." labels.
pub struct InputSite<'a> {
    pub shape: &'a Shape,
    pub span: Span,
    pub is_network_input: bool,
}

/// Resolves `name args` applied to `input`. `next_param` is the id the op's first parameter
/// will get.
pub fn resolve(
    name: &Ident,
    args: Vec<EvalArg>,
    input: &InputSite,
    next_param: u32,
    scope: &Scope,
    stmt: Span,
) -> diag::Result<Resolved> {
    let callee = format!("`{}`", name.name);
    let table = argument_table(&name.name);
    let bound = bind(&callee, table.0, table.1, args)?;
    let spans: HashMap<&str, Span> = table
        .0
        .iter()
        .zip(&bound)
        .filter_map(|(p, b)| b.as_ref().map(|(_, s)| (*p, *s)))
        .collect();
    let args = Args {
        callee: &callee,
        params: table.0,
        bound,
        scope,
        stmt,
        input: input.shape,
        name_span: name.span,
    };
    let weight = ParamId(next_param);
    let bias = ParamId(next_param + 1);
    let op = match name.name.as_str() {
        "conv" => {
            let rank = args.spatial_rank()?;
            let padding = match args.get("padding") {
                Some((Value::Symbol(s), span)) if s == "same" => PaddingArg::Same(*span),
                _ => PaddingArg::Explicit(args.spatial("padding", rank, 0, false)?),
            };
            let kernel = args.spatial("kernel", rank, 0, true)?;
            let stride = args.spatial("stride", rank, 1, true)?;
            let dilation = args.spatial("dilation", rank, 1, true)?;
            let padding = match padding {
                PaddingArg::Explicit(p) => p.iter().map(|&p| (p, p)).collect(),
                PaddingArg::Same(span) => {
                    if stride.iter().any(|&s| s != 1) {
                        return Err(vec![Diagnostic::error(
                            Code::OutOfRange,
                            "`padding=same` needs stride 1",
                        )
                        .label(span, "`same` padding")
                        .label(
                            spans.get("stride").copied().unwrap_or(stmt),
                            "stride is not 1",
                        )
                        .note("PyTorch allows `padding='same'` only with stride 1")]);
                    }
                    // PyTorch: total d·(k−1), half before, the rest after.
                    kernel
                        .iter()
                        .zip(&dilation)
                        .map(|(&k, &d)| {
                            let total = d.saturating_mul(k - 1);
                            (total / 2, total - total / 2)
                        })
                        .collect()
                }
            };
            let groups = args.positive("groups", 1)?;
            Op::Conv(Conv {
                in_channels: input.shape.channels(),
                out_channels: args.positive("channels", 0)?,
                kernel,
                stride,
                padding,
                dilation,
                groups,
                weight,
                bias: args.boolean("bias", true)?.then_some(bias),
            })
        }
        "maxpool" | "avgpool" => {
            let rank = args.spatial_rank()?;
            let kernel = args.spatial("kernel", rank, 0, true)?;
            let stride = match args.get("stride") {
                Some(_) => args.spatial("stride", rank, 1, true)?,
                None => kernel.clone(),
            };
            let kind = if name.name == "maxpool" {
                PoolKind::Max
            } else {
                PoolKind::Avg
            };
            Op::Pool(Pool {
                kind,
                kernel,
                stride,
                padding: args.spatial("padding", rank, 0, false)?,
            })
        }
        "global_avgpool" => Op::GlobalAvgPool,
        "flatten" => Op::Flatten,
        "dense" => Op::Dense(Dense {
            in_features: input.shape.0.iter().product(),
            units: args.positive("units", 0)?,
            weight,
            bias: args.boolean("bias", true)?.then_some(bias),
        }),
        "relu" => Op::Activation(Activation::Relu),
        "leaky_relu" => Op::Activation(Activation::LeakyRelu {
            slope: args.float("slope", Some(0.01), |_| true, "a finite number")?,
        }),
        "sigmoid" => Op::Activation(Activation::Sigmoid),
        "tanh" => Op::Activation(Activation::Tanh),
        "softmax" => Op::Activation(Activation::Softmax),
        "dropout" => Op::Dropout {
            p: args.float(
                "p",
                None,
                |p| (0.0..1.0).contains(&p),
                "at least 0 and below 1",
            )?,
        },
        "batchnorm" => Op::BatchNorm(BatchNorm {
            channels: input.shape.channels(),
            eps: args.float("eps", Some(1e-5), |e| e > 0.0, "positive")?,
            momentum: args.float(
                "momentum",
                Some(0.1),
                |m| (0.0..=1.0).contains(&m),
                "between 0 and 1",
            )?,
            weight,
            bias,
            running_mean: ParamId(next_param + 2),
            running_var: ParamId(next_param + 3),
        }),
        "identity" => Op::Identity,
        _ => {
            return Err(vec![Diagnostic::error(
                Code::UnknownOp,
                format!("unknown op {callee}"),
            )
            .label(name.span, "not an op")])
        }
    };
    let shape = shape::infer(&op, &[input.shape])
        .map_err(|e| vec![shape_error(&e, &op, &spans, input, stmt, name.span)])?;
    let params = params_of(&op, input.shape);
    Ok(Resolved { op, shape, params })
}

enum PaddingArg {
    Same(Span),
    Explicit(Vec<usize>),
}

/// `(parameter names, how many may be positional)` of each op.
fn argument_table(op: &str) -> (&'static [&'static str], usize) {
    match op {
        "conv" => (
            &[
                "channels", "kernel", "stride", "padding", "dilation", "groups", "bias",
            ],
            1,
        ),
        "maxpool" | "avgpool" => (&["kernel", "stride", "padding"], 0),
        "dense" => (&["units", "bias"], 1),
        "leaky_relu" => (&["slope"], 0),
        "dropout" => (&["p"], 1),
        "batchnorm" => (&["eps", "momentum"], 0),
        _ => (&[], 0),
    }
}

/// The parameters an op owns, in the order of their ids, with PyTorch's layouts.
fn params_of(op: &Op, input: &Shape) -> Vec<(ParamKind, Vec<usize>)> {
    match op {
        Op::Conv(c) => {
            let mut weight = vec![c.out_channels, input.channels() / c.groups.max(1)];
            weight.extend(&c.kernel);
            let mut params = vec![(ParamKind::Weight, weight)];
            if c.bias.is_some() {
                params.push((ParamKind::Bias, vec![c.out_channels]));
            }
            params
        }
        Op::Dense(d) => {
            let mut params = vec![(ParamKind::Weight, vec![d.units, d.in_features])];
            if d.bias.is_some() {
                params.push((ParamKind::Bias, vec![d.units]));
            }
            params
        }
        Op::BatchNorm(b) => [
            ParamKind::Weight,
            ParamKind::Bias,
            ParamKind::RunningMean,
            ParamKind::RunningVar,
        ]
        .into_iter()
        .map(|k| (k, vec![b.channels]))
        .collect(),
        Op::Input
        | Op::Pool(_)
        | Op::GlobalAvgPool
        | Op::Flatten
        | Op::Activation(_)
        | Op::Dropout { .. }
        | Op::Identity
        | Op::Concat
        | Op::Add => Vec::new(),
    }
}

/// Bound arguments of one op with typed accessors.
struct Args<'a> {
    callee: &'a str,
    params: &'a [&'a str],
    bound: Vec<BoundArg>,
    scope: &'a Scope,
    stmt: Span,
    input: &'a Shape,
    name_span: Span,
}

impl Args<'_> {
    fn get(&self, param: &str) -> Option<&(Value, Span)> {
        let slot = self.params.iter().position(|p| *p == param)?;
        self.bound[slot].as_ref()
    }

    /// The value, or `Err(missing)` if required (`default` is None) and absent.
    fn value_or<T>(
        &self,
        param: &str,
        default: Option<T>,
        convert: impl FnOnce(&Value, Span) -> diag::Result<T>,
    ) -> diag::Result<T> {
        match (self.get(param), default) {
            (Some((v, span)), _) => convert(v, *span),
            (None, Some(d)) => Ok(d),
            (None, None) => Err(missing(self.callee, param, self.stmt)),
        }
    }

    /// Number of spatial axes of the input; an error if it has none.
    fn spatial_rank(&self) -> diag::Result<usize> {
        match self.input.rank() {
            2..=4 => Ok(self.input.rank() - 1),
            _ => Err(vec![Diagnostic::error(
                Code::WrongRank,
                format!(
                    "{} needs an input with 1 to 3 spatial axes, but the input is {}",
                    self.callee, self.input
                ),
            )
            .label(self.name_span, "needs `[channels, spatial...]`")]),
        }
    }

    fn positive(&self, param: &str, default: usize) -> diag::Result<usize> {
        let default = (default > 0).then_some(default);
        self.value_or(param, default, |v, span| {
            size(expect_int(v, span, self.scope)?, param, span, true)
        })
    }

    /// An int or a tuple of one int per spatial axis; `default` 0 means required.
    fn spatial(
        &self,
        param: &str,
        rank: usize,
        default: usize,
        positive: bool,
    ) -> diag::Result<Vec<usize>> {
        let required = default == 0 && positive;
        let default = (!required).then(|| vec![default; rank]);
        self.value_or(param, default, |v, span| match v {
            Value::Tuple(items) if items.len() != rank => Err(vec![Diagnostic::error(
                Code::TupleArity,
                format!(
                    "`{param}` has {} values, but the input {} has {}",
                    items.len(),
                    self.input,
                    axes(rank)
                ),
            )
            .label(span, format!("needs {rank} (or one integer for all axes)"))]),
            Value::Tuple(items) => items
                .iter()
                .map(|i| size(expect_int(i, span, self.scope)?, param, span, positive))
                .collect(),
            other => Ok(vec![
                size(
                    expect_int(other, span, self.scope)?,
                    param,
                    span,
                    positive
                )?;
                rank
            ]),
        })
    }

    fn boolean(&self, param: &str, default: bool) -> diag::Result<bool> {
        self.value_or(param, Some(default), |v, span| match v {
            Value::Bool(b) => Ok(*b),
            other => Err(vec![Diagnostic::error(
                Code::WrongType,
                format!(
                    "`{param}` must be `true` or `false`, not {}",
                    other.describe()
                ),
            )
            .label(span, "not a boolean")]),
        })
    }

    fn float(
        &self,
        param: &str,
        default: Option<f32>,
        valid: impl Fn(f32) -> bool,
        range: &str,
    ) -> diag::Result<f32> {
        self.value_or(param, default, |v, span| {
            let x = match v {
                Value::Int(i) => *i as f32,
                Value::Float(x) => *x as f32,
                other => return Err(vec![not_a_number(other, span, self.scope)]),
            };
            if !x.is_finite() || !valid(x) {
                return Err(vec![Diagnostic::error(
                    Code::OutOfRange,
                    format!("`{param}` must be {range}, found {x}"),
                )
                .label(span, "out of range")]);
            }
            Ok(x)
        })
    }
}

fn axes(rank: usize) -> String {
    match rank {
        1 => "1 spatial axis".to_string(),
        n => format!("{n} spatial axes"),
    }
}

/// A user integer as a size: positive (or non-negative) and within [`MAX_ELEMENTS`].
pub fn size(value: i64, param: &str, span: Span, positive: bool) -> diag::Result<usize> {
    if value < 0 || (positive && value == 0) {
        let must = if positive { "positive" } else { "zero or more" };
        return Err(vec![Diagnostic::error(
            Code::NonPositive,
            format!("`{param}` must be {must}, found {value}"),
        )
        .label(span, format!("must be {must}"))]);
    }
    if value as u64 > MAX_ELEMENTS as u64 {
        return Err(vec![Diagnostic::error(
            Code::TooLarge,
            format!("`{param}` is {value}, above the limit of {MAX_ELEMENTS}"),
        )
        .label(span, "too large")]);
    }
    Ok(value as usize)
}
