//! The `train { .. }` section → a validated [`TrainConfig`]. Keys: `data`, `epochs`, `batch`,
//! `optimizer`, `loss`, `seed`, and the extensions `init` and `schedule`; every one optional, with the defaults of
//! [`TrainConfig::default`]. [`TrainConfig`]'s `Display` writes the section back in `.cnn`
//! syntax with every setting resolved (the IR dump prints it).

use super::eval::{eval, expect_int, Scope, Value};
use std::fmt;

use super::{DataSource, Init, Loss, Optimizer, Schedule, TrainConfig};
use crate::diag::{self, did_you_mean, Code, Diagnostic};
use crate::span::Span;
use crate::syntax::ast::{Expr, Setting};

const KEYS: [&str; 8] = [
    "data",
    "epochs",
    "batch",
    "optimizer",
    "loss",
    "seed",
    "init",
    "schedule",
];

pub fn train_config(settings: &[Setting], scope: &Scope) -> diag::Result<TrainConfig> {
    let mut config = TrainConfig::default();
    let mut seen: Vec<(&str, Span)> = Vec::new();
    // Where `min_lr` was written, checked against the learning rate once every key is read.
    let mut min_lr_at: Option<Span> = None;
    let mut optimizer_at: Option<Span> = None;
    for setting in settings {
        let key = setting.key.name.as_str();
        if let Some((_, first)) = seen.iter().find(|(k, _)| *k == key) {
            return Err(vec![Diagnostic::error(
                Code::DuplicateArgument,
                format!("`{key}` is set twice in `train`"),
            )
            .label(setting.key.span, "set again here")
            .label(*first, "first set here")]);
        }
        seen.push((key, setting.key.span));
        let span = setting.value.span;
        let value = eval(&setting.value, scope)?;
        match key {
            "data" => config.data = data_source(&value, span)?,
            "epochs" => config.epochs = positive(&value, span, scope, key)?,
            "batch" => config.batch = positive(&value, span, scope, key)?,
            "seed" => {
                let seed = expect_int(&value, span, scope)?;
                config.seed = u64::try_from(seed).map_err(|_| {
                    bad(
                        span,
                        format!("`seed` must be zero or more, found {seed}"),
                        "negative",
                    )
                })?;
            }
            "optimizer" => {
                config.optimizer = optimizer(&value, span, scope)?;
                optimizer_at = Some(span);
            }
            "loss" => {
                config.loss = choose(
                    &value,
                    span,
                    key,
                    &[("cross_entropy", Loss::CrossEntropy), ("mse", Loss::Mse)],
                )?
            }
            "init" => {
                config.init = choose(
                    &value,
                    span,
                    key,
                    &[("default", Init::PyTorch), ("xavier", Init::Xavier)],
                )?
            }
            "schedule" => (config.schedule, min_lr_at) = schedule(&value, span, scope)?,
            _ => {
                let d = Diagnostic::error(
                    Code::BadTrainSetting,
                    format!("`train` has no setting `{key}`"),
                )
                .label(setting.key.span, "unknown setting")
                .note(format!("the settings are {}", KEYS.join(", ")));
                return Err(vec![match did_you_mean(key, KEYS) {
                    Some(help) => d.help(help),
                    None => d,
                }]);
            }
        }
    }
    if let (Some(at), Err(message)) = (min_lr_at, check_schedule(&config)) {
        let d = Diagnostic::error(Code::BadTrainSetting, message)
            .label(at, "not below the learning rate");
        return Err(vec![match optimizer_at {
            Some(optimizer) => d.label(optimizer, "the learning rate is set here"),
            None => d.note("the default optimizer is sgd(lr=0.1)"),
        }]);
    }
    Ok(config)
}

/// The learning rate the optimiser starts from.
pub fn base_lr(optimizer: &Optimizer) -> f32 {
    match optimizer {
        Optimizer::Sgd { lr, .. } | Optimizer::Adam { lr, .. } => *lr,
    }
}

/// What the schedule needs of the rest of the configuration: a cosine's `min_lr` below the
/// optimiser's `lr`. Checked again after the command-line flags are applied.
pub fn check_schedule(config: &TrainConfig) -> Result<(), String> {
    let lr = base_lr(&config.optimizer);
    match config.schedule {
        Schedule::Cosine { min_lr } if min_lr >= lr => Err(format!(
            "`min_lr` of the cosine schedule must be below the learning rate {lr:?}, found {min_lr:?}"
        )),
        _ => Ok(()),
    }
}

/// A `schedule` value written outside a `train` section (`cnnc run --schedule TEXT`): the
/// same rules and diagnostics as the key, with no `let` names in scope. `min_lr` is checked
/// against the learning rate by the caller ([`check_schedule`]), once the flags are applied.
pub fn schedule_value(expr: &Expr) -> diag::Result<Schedule> {
    let scope = Scope::new();
    let value = eval(expr, &scope)?;
    Ok(schedule(&value, expr.span, &scope)?.0)
}

/// The section as `.cnn` source, defaults written out, one setting a line. Floats use Rust's
/// shortest round-trip form (`0.1`, `1e-8`), which the grammar reads back to the same `f32`.
impl fmt::Display for TrainConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let data = match &self.data {
            DataSource::Mnist => "mnist".to_string(),
            DataSource::FashionMnist => "fashion-mnist".to_string(),
            DataSource::Synthetic => "synthetic".to_string(),
            DataSource::Path(path) => format!("\"{path}\""),
        };
        let optimizer = match &self.optimizer {
            Optimizer::Sgd {
                lr,
                momentum,
                weight_decay,
            } => format!("sgd(lr={lr:?}, momentum={momentum:?}, weight_decay={weight_decay:?})"),
            Optimizer::Adam {
                lr,
                betas: (beta1, beta2),
                eps,
                weight_decay,
            } => format!(
                "adam(lr={lr:?}, betas=({beta1:?}, {beta2:?}), eps={eps:?}, weight_decay={weight_decay:?})"
            ),
        };
        let loss = match self.loss {
            Loss::CrossEntropy => "cross_entropy",
            Loss::Mse => "mse",
        };
        let init = match self.init {
            Init::PyTorch => "default",
            Init::Xavier => "xavier",
        };
        writeln!(f, "train {{")?;
        writeln!(f, "    data = {data}")?;
        writeln!(f, "    epochs = {}", self.epochs)?;
        writeln!(f, "    batch = {}", self.batch)?;
        writeln!(f, "    optimizer = {optimizer}")?;
        writeln!(f, "    loss = {loss}")?;
        writeln!(f, "    seed = {}", self.seed)?;
        writeln!(f, "    init = {init}")?;
        writeln!(f, "    schedule = {}", self.schedule)?;
        writeln!(f, "}}")
    }
}

/// `constant`, `step(every=5, gamma=0.1)` or `cosine(min_lr=0.0)`, every argument written out.
impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Constant => f.write_str("constant"),
            Schedule::Step { every, gamma } => write!(f, "step(every={every}, gamma={gamma:?})"),
            Schedule::Cosine { min_lr } => write!(f, "cosine(min_lr={min_lr:?})"),
        }
    }
}

fn bad(span: Span, message: String, label: &str) -> Vec<Diagnostic> {
    vec![Diagnostic::error(Code::BadTrainSetting, message).label(span, label.to_string())]
}

fn positive(value: &Value, span: Span, scope: &Scope, key: &str) -> diag::Result<usize> {
    let n = expect_int(value, span, scope)?;
    if n <= 0 {
        return Err(bad(
            span,
            format!("`{key}` must be positive, found {n}"),
            "must be positive",
        ));
    }
    usize::try_from(n).map_err(|_| bad(span, format!("`{key}` is too large"), "too large"))
}

/// One of the named `choices`.
fn choose<T: Copy>(value: &Value, span: Span, key: &str, choices: &[(&str, T)]) -> diag::Result<T> {
    let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
    if let Value::Symbol(s) = value {
        if let Some((_, v)) = choices.iter().find(|(n, _)| n == s) {
            return Ok(*v);
        }
    }
    let d = Diagnostic::error(
        Code::BadTrainSetting,
        format!(
            "`{key}` must be one of {}, not {}",
            names.join(", "),
            value.describe()
        ),
    )
    .label(span, "not a valid choice");
    Err(vec![match value {
        Value::Symbol(s) => match did_you_mean(s, names) {
            Some(help) => d.help(help),
            None => d,
        },
        _ => d,
    }])
}

fn data_source(value: &Value, span: Span) -> diag::Result<DataSource> {
    match value {
        Value::Symbol(s) if s == "mnist" => Ok(DataSource::Mnist),
        Value::Symbol(s) if s == "fashion-mnist" || s == "fashion_mnist" => {
            Ok(DataSource::FashionMnist)
        }
        Value::Symbol(s) if s == "synthetic" => Ok(DataSource::Synthetic),
        Value::Str(path) => Ok(DataSource::Path(path.clone())),
        other => {
            let d = Diagnostic::error(
                Code::BadTrainSetting,
                format!(
                    "`data` must be mnist, fashion-mnist, synthetic or a \"path\", not {}",
                    other.describe()
                ),
            )
            .label(span, "unknown data source");
            Err(vec![match other {
                Value::Symbol(s) => {
                    match did_you_mean(s, ["mnist", "fashion-mnist", "synthetic"]) {
                        Some(help) => d.help(help),
                        None => d,
                    }
                }
                _ => d,
            }])
        }
    }
}

/// `sgd(lr, momentum=0, weight_decay=0)` or `adam(lr=0.001, betas=(0.9, 0.999), eps=1e-8, weight_decay=0)`.
fn optimizer(value: &Value, span: Span, scope: &Scope) -> diag::Result<Optimizer> {
    let Value::Call { name, args } = value else {
        return Err(bad(
            span,
            format!(
                "`optimizer` must be `sgd(lr=..)` or `adam(..)`, not {}",
                value.describe()
            ),
            "not an optimizer",
        ));
    };
    let params: &[&str] = match name.as_str() {
        "sgd" => &["lr", "momentum", "weight_decay"],
        "adam" => &["lr", "betas", "eps", "weight_decay"],
        _ => {
            let d = Diagnostic::error(Code::BadTrainSetting, format!("unknown optimizer `{name}`"))
                .label(span, "not sgd or adam");
            return Err(vec![match did_you_mean(name, ["sgd", "adam"]) {
                Some(help) => d.help(help),
                None => d,
            }]);
        }
    };
    let bound = super::args::bind(&format!("optimizer `{name}`"), params, 1, args.clone())?;
    let number = |slot: usize,
                  default: Option<f32>,
                  check: fn(f32) -> bool,
                  range: &str|
     -> diag::Result<f32> {
        match (&bound[slot], default) {
            (Some((v, at)), _) => {
                let x = match v {
                    Value::Int(i) => *i as f32,
                    Value::Float(x) => *x as f32,
                    other => return Err(vec![super::eval::not_a_number(other, *at, scope)]),
                };
                if x.is_finite() && check(x) {
                    Ok(x)
                } else {
                    Err(bad(
                        *at,
                        format!("`{}` must be {range}, found {x}", params[slot]),
                        "out of range",
                    ))
                }
            }
            (None, Some(d)) => Ok(d),
            (None, None) => Err(super::args::missing(
                &format!("optimizer `{name}`"),
                params[slot],
                span,
            )),
        }
    };
    let positive = |x: f32| x > 0.0;
    let non_negative = |x: f32| x >= 0.0;
    let unit = |x: f32| (0.0..1.0).contains(&x);
    Ok(match name.as_str() {
        "sgd" => Optimizer::Sgd {
            lr: number(0, None, positive, "positive")?,
            momentum: number(1, Some(0.0), unit, "at least 0 and below 1")?,
            weight_decay: number(2, Some(0.0), non_negative, "zero or more")?,
        },
        _ => {
            let betas = match &bound[1] {
                None => (0.9, 0.999),
                Some((Value::Tuple(items), at)) if items.len() == 2 => {
                    let beta = |v: &Value| match v {
                        Value::Float(x) if unit(*x as f32) => Ok(*x as f32),
                        Value::Int(0) => Ok(0.0),
                        _ => Err(bad(
                            *at,
                            "`betas` must be two numbers in [0, 1)".to_string(),
                            "out of range",
                        )),
                    };
                    (beta(&items[0])?, beta(&items[1])?)
                }
                Some((_, at)) => {
                    return Err(bad(
                        *at,
                        "`betas` must be a pair like (0.9, 0.999)".to_string(),
                        "not a pair",
                    ))
                }
            };
            Optimizer::Adam {
                lr: number(0, Some(0.001), positive, "positive")?,
                betas,
                eps: number(2, Some(1e-8), positive, "positive")?,
                weight_decay: number(3, Some(0.0), non_negative, "zero or more")?,
            }
        }
    })
}

/// `constant`, `step(every, gamma=0.1)` or `cosine(min_lr=0)` (`cosine` alone is
/// `cosine()`), as `torch.optim.lr_scheduler`'s StepLR and CosineAnnealingLR. Also returns
/// where `min_lr` was written, for the check against the learning rate.
fn schedule(value: &Value, span: Span, scope: &Scope) -> diag::Result<(Schedule, Option<Span>)> {
    const NAMES: [&str; 3] = ["constant", "step", "cosine"];
    let (name, args) = match value {
        Value::Symbol(name) => (name.as_str(), Vec::new()),
        Value::Call { name, args } => (name.as_str(), args.clone()),
        other => {
            return Err(bad(
                span,
                format!(
                    "`schedule` must be constant, step(every=..) or cosine, not {}",
                    other.describe()
                ),
                "not a schedule",
            ))
        }
    };
    let (params, positional): (&[&str], usize) = match name {
        "constant" => (&[], 0),
        "step" => (&["every", "gamma"], 1),
        "cosine" => (&["min_lr"], 0),
        _ => {
            let d = Diagnostic::error(Code::BadTrainSetting, format!("unknown schedule `{name}`"))
                .label(span, "not constant, step or cosine")
                .note("the schedules are constant, step(every=N, gamma=0.1) and cosine(min_lr=0)");
            return Err(vec![match did_you_mean(name, NAMES) {
                Some(help) => d.help(help),
                None => d,
            }]);
        }
    };
    let callee = format!("schedule `{name}`");
    let bound = super::args::bind(&callee, params, positional, args)?;
    let number = |slot: usize| -> diag::Result<Option<(f32, Span)>> {
        match &bound[slot] {
            None => Ok(None),
            Some((Value::Int(i), at)) => Ok(Some((*i as f32, *at))),
            Some((Value::Float(x), at)) if (*x as f32).is_finite() => Ok(Some((*x as f32, *at))),
            Some((Value::Float(x), at)) => Err(bad(
                *at,
                format!("`{}` must be a finite number, found {x}", params[slot]),
                "out of range",
            )),
            Some((other, at)) => Err(vec![super::eval::not_a_number(other, *at, scope)]),
        }
    };
    Ok(match name {
        "constant" => (Schedule::Constant, None),
        "step" => {
            let Some((every, at)) = &bound[0] else {
                return Err(super::args::missing(&callee, "every", span));
            };
            let n = expect_int(every, *at, scope)?;
            if n <= 0 {
                return Err(bad(
                    *at,
                    format!("`every` must be a positive number of epochs, found {n}"),
                    "must be positive",
                ));
            }
            let every = usize::try_from(n)
                .map_err(|_| bad(*at, "`every` is too large".to_string(), "too large"))?;
            let gamma = match number(1)? {
                None => 0.1,
                Some((g, _)) if g > 0.0 => g,
                Some((g, at)) => {
                    return Err(bad(
                        at,
                        format!("`gamma` must be positive, found {g}"),
                        "must be positive",
                    ))
                }
            };
            (Schedule::Step { every, gamma }, None)
        }
        _ => match number(0)? {
            None => (Schedule::Cosine { min_lr: 0.0 }, None),
            Some((m, at)) if m >= 0.0 => (Schedule::Cosine { min_lr: m }, Some(at)),
            Some((m, at)) => {
                return Err(bad(
                    at,
                    format!("`min_lr` must be zero or more, found {m}"),
                    "negative",
                ))
            }
        },
    })
}

#[cfg(test)]
mod tests {
    use crate::diag::Code;
    use crate::ir::{DataSource, Optimizer, TrainConfig};
    use crate::span::SourceMap;

    fn train(settings: &str) -> Result<TrainConfig, Code> {
        let text = format!(
            "network n {{\n input [4]\n let rate = 0.05\n dense 2\n train {{ {settings} }}\n}}"
        );
        crate::load_str("t.cnn", &text, &mut SourceMap::default())
            .map(|mut g| g.remove(0).train.unwrap_or_default())
            .map_err(|d| d[0].code)
    }

    #[test]
    fn missing_keys_take_the_defaults_and_lets_are_visible() {
        let config = train("optimizer = sgd(lr=rate * 2)").unwrap();
        assert_eq!(
            config.optimizer,
            Optimizer::Sgd {
                lr: 0.1,
                momentum: 0.0,
                weight_decay: 0.0
            }
        );
        assert_eq!(
            (config.data, config.epochs, config.batch),
            (DataSource::Synthetic, 10, 256)
        );
    }

    #[test]
    fn invalid_settings_are_rejected() {
        assert_eq!(train("epochs = 0"), Err(Code::BadTrainSetting));
        assert_eq!(train("seed = -1"), Err(Code::BadTrainSetting));
        assert_eq!(train("loss = hinge"), Err(Code::BadTrainSetting));
        assert_eq!(
            train("optimizer = sgd(momentum=0.9)"),
            Err(Code::MissingArgument)
        );
        assert_eq!(
            train("optimizer = adam(betas=(0.9, 1.5))"),
            Err(Code::BadTrainSetting)
        );
        assert_eq!(train("batch = 8; batch = 16"), Err(Code::DuplicateArgument));
        assert_eq!(train("data = imagenet"), Err(Code::BadTrainSetting));
        assert_eq!(train("schedule = cosin"), Err(Code::BadTrainSetting));
        assert_eq!(train("schedule = step"), Err(Code::MissingArgument));
        assert_eq!(
            train("schedule = step(every=-1)"),
            Err(Code::BadTrainSetting)
        );
        assert_eq!(
            train("schedule = step(every=2, gamma=0)"),
            Err(Code::BadTrainSetting)
        );
        assert_eq!(
            train("schedule = cosine(min_lr=0.2)"),
            Err(Code::BadTrainSetting)
        );
        assert_eq!(
            train("schedule = cosine(floor=0.2)"),
            Err(Code::UnknownKeyword)
        );
    }

    /// What `Display` writes reads back to the same configuration, for every kind of value.
    #[test]
    fn the_printed_section_reads_back_to_the_same_config() {
        let configs = [
            "data = fashion-mnist; optimizer = adam(lr=0.003, betas=(0.8, 0.99), eps=1e-8); init = xavier",
            "data = \"some/folder\"; epochs = 3; batch = 7; loss = mse; seed = 42",
            "data = mnist; optimizer = sgd(lr=0.9, momentum=0.5, weight_decay=0.0001)",
            "schedule = step(every=5, gamma=0.5)",
            "optimizer = sgd(lr=0.05); schedule = cosine(min_lr=0.0005)",
            "schedule = cosine; epochs = 15",
        ];
        for settings in configs {
            let config = train(settings).unwrap();
            let printed = config.to_string();
            let text = format!("network n {{\n input [4]\n dense 2\n {printed}}}");
            let again = crate::load_str("again.cnn", &text, &mut SourceMap::default())
                .unwrap_or_else(|_| panic!("does not parse:\n{printed}"))
                .remove(0)
                .train;
            assert_eq!(again, Some(config), "{printed}");
        }
        assert_eq!(
            TrainConfig::default().to_string(),
            "train {\n    data = synthetic\n    epochs = 10\n    batch = 256\n    optimizer = sgd(lr=0.1, momentum=0.0, weight_decay=0.0)\n    loss = cross_entropy\n    seed = 0\n    init = default\n    schedule = constant\n}\n"
        );
    }
}
