//! Optimisers with exactly PyTorch's update rules, on one flat `f32` slice per parameter.
//!
//! `torch.optim.SGD(lr, momentum, weight_decay)` with dampening 0 and no Nesterov:
//!
//! ```text
//! g ← grad + weight_decay·θ
//! if momentum ≠ 0:  b ← g on the first step, else momentum·b + g;   g ← b
//! θ ← θ − lr·g
//! ```
//!
//! `torch.optim.Adam(lr, betas=(β1, β2), eps, weight_decay)` (L2 decay, not AdamW; no amsgrad):
//!
//! ```text
//! t ← t + 1;  g ← grad + weight_decay·θ
//! m ← m + (1 − β1)·(g − m)            (torch's lerp)
//! v ← β2·v + (1 − β2)·g²
//! θ ← θ − (lr / (1 − β1ᵗ)) · m / (√v / √(1 − β2ᵗ) + eps)
//! ```
//!
//! The bias corrections are computed in f64, as PyTorch does with its Python-float step, from
//! the hyper-parameters as written (see [`as_written`]).

use crate::ir::{self, Param};

/// The optimiser's memory, one entry per parameter of `Graph::params` (empty for buffers,
/// which are not trained). Saved in checkpoints so that `--resume` continues exactly.
#[derive(Clone, Debug, PartialEq)]
pub enum OptimizerState {
    Sgd {
        /// `None` until the first step (and always with momentum 0), as torch's
        /// `momentum_buffer`.
        momentum_buffers: Vec<Option<Vec<f32>>>,
    },
    Adam {
        /// Steps taken so far (`t`).
        step: u64,
        exp_avg: Vec<Vec<f32>>,
        exp_avg_sq: Vec<Vec<f32>>,
    },
}

impl OptimizerState {
    /// The state before the first step.
    pub fn new(config: &ir::Optimizer, params: &[Param]) -> Self {
        let zeros = || -> Vec<Vec<f32>> {
            params
                .iter()
                .map(|p| {
                    if p.kind.trainable() {
                        vec![0.0; p.numel()]
                    } else {
                        Vec::new()
                    }
                })
                .collect()
        };
        match config {
            ir::Optimizer::Sgd { .. } => OptimizerState::Sgd {
                momentum_buffers: vec![None; params.len()],
            },
            ir::Optimizer::Adam { .. } => OptimizerState::Adam {
                step: 0,
                exp_avg: zeros(),
                exp_avg_sq: zeros(),
            },
        }
    }

    /// The optimiser's name, as written in `.cnn`.
    pub fn name(&self) -> &'static str {
        match self {
            OptimizerState::Sgd { .. } => "sgd",
            OptimizerState::Adam { .. } => "adam",
        }
    }
}

/// An optimiser: its hyper-parameters and its state, always of the same kind (the fields are
/// private so that nothing can pair SGD settings with Adam state).
#[derive(Clone, Debug, PartialEq)]
pub struct Optimizer {
    config: ir::Optimizer,
    state: OptimizerState,
    /// Which entries of `Graph::params` are trained (running statistics are not).
    trainable: Vec<bool>,
    /// The learning rate of the current epoch, a Python float as `group["lr"]`: the
    /// config's `lr` as written until [`Optimizer::set_lr`] (a schedule) changes it.
    lr: f64,
}

/// Why a saved optimiser state cannot continue this run.
#[derive(Debug, PartialEq)]
pub struct StateMismatch(pub String);

impl std::fmt::Display for StateMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StateMismatch {}

impl Optimizer {
    pub fn new(config: &ir::Optimizer, params: &[Param]) -> Self {
        Optimizer {
            config: config.clone(),
            state: OptimizerState::new(config, params),
            trainable: params.iter().map(|p| p.kind.trainable()).collect(),
            lr: as_written(crate::ir::train::base_lr(config)),
        }
    }

    /// Sets the learning rate for the next steps, as a scheduler sets `group["lr"]`.
    pub fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }

    /// The learning rate of the next step.
    pub fn lr(&self) -> f64 {
        self.lr
    }

    pub fn config(&self) -> &ir::Optimizer {
        &self.config
    }

    /// The state to save in a checkpoint.
    pub fn state(&self) -> &OptimizerState {
        &self.state
    }

    /// Continues from a saved state (from a checkpoint), which must be of this optimiser's
    /// kind and cover the same parameters.
    pub fn resume(&mut self, saved: OptimizerState) -> Result<(), StateMismatch> {
        if saved.name() != self.state.name() {
            return Err(StateMismatch(format!(
                "the checkpoint holds {} state but this run uses {}",
                saved.name(),
                self.state.name()
            )));
        }
        let count = match &saved {
            OptimizerState::Sgd { momentum_buffers } => momentum_buffers.len(),
            OptimizerState::Adam { exp_avg, .. } => exp_avg.len(),
        };
        if count != self.trainable.len() {
            return Err(StateMismatch(format!(
                "the checkpoint's optimiser state covers {count} parameters, the network has {}",
                self.trainable.len()
            )));
        }
        self.state = saved;
        Ok(())
    }

    /// Starts a step, which [`Optimizer::step_param`] then applies to each parameter in turn:
    /// Adam counts it.
    pub fn begin_step(&mut self) {
        if let OptimizerState::Adam { step, .. } = &mut self.state {
            *step += 1;
        }
    }

    /// The step's update of parameter `i` (`Graph::params` order) from its gradient; a buffer
    /// (not trainable) is left alone.
    pub fn step_param(&mut self, i: usize, param: &mut [f32], grad: &[f32]) {
        if !self.trainable[i] {
            return;
        }
        match (&self.config, &mut self.state) {
            (
                &ir::Optimizer::Sgd {
                    momentum,
                    weight_decay,
                    ..
                },
                OptimizerState::Sgd { momentum_buffers },
            ) => sgd(
                param,
                grad,
                &mut momentum_buffers[i],
                // PyTorch's `add_(b, alpha=-lr)` rounds the float to the tensor's f32.
                self.lr as f32,
                momentum,
                weight_decay,
            ),
            (
                &ir::Optimizer::Adam {
                    betas,
                    eps,
                    weight_decay,
                    ..
                },
                OptimizerState::Adam {
                    step,
                    exp_avg,
                    exp_avg_sq,
                },
            ) => adam(
                param,
                grad,
                &mut exp_avg[i],
                &mut exp_avg_sq[i],
                *step,
                self.lr,
                betas,
                eps,
                weight_decay,
            ),
            // `new` and `resume` keep config and state of the same kind.
            (ir::Optimizer::Sgd { .. }, OptimizerState::Adam { .. })
            | (ir::Optimizer::Adam { .. }, OptimizerState::Sgd { .. }) => {
                unreachable!("optimiser config and state always agree")
            }
        }
    }
}

/// One `torch.optim.SGD` step on one parameter.
pub fn sgd(
    param: &mut [f32],
    grad: &[f32],
    buffer: &mut Option<Vec<f32>>,
    lr: f32,
    momentum: f32,
    weight_decay: f32,
) {
    let decayed = |i: usize, p: f32| grad[i] + weight_decay * p;
    if momentum == 0.0 {
        for (i, p) in param.iter_mut().enumerate() {
            *p -= lr * decayed(i, *p);
        }
        return;
    }
    match buffer {
        None => {
            let b: Vec<f32> = param
                .iter()
                .enumerate()
                .map(|(i, &p)| decayed(i, p))
                .collect();
            param.iter_mut().zip(&b).for_each(|(p, &b)| *p -= lr * b);
            *buffer = Some(b);
        }
        Some(b) => {
            for (i, (p, b)) in param.iter_mut().zip(b.iter_mut()).enumerate() {
                *b = momentum * *b + decayed(i, *p);
                *p -= lr * *b;
            }
        }
    }
}

// The decimal the user wrote, as the Python float PyTorch would hold: `.cnn` values arrive
// as f32, and `1 − β` computed in f32 from `0.999f32` is off by 1.3e-5 relative from
// PyTorch's `1 − 0.999` in f64. The shortest decimal that rounds to the f32 is that number.
use super::schedule::as_written;

/// One `torch.optim.Adam` step on one parameter; `step` is `t` after incrementing (≥ 1);
/// `lr` is the Python float of `group["lr"]`.
/// Scalars are formed in f64 and rounded to f32 once, and each tensor operation is rounded
/// in PyTorch's order (`lerp_`, `mul_().addcmul_()`, `sqrt() / c + eps`, `addcdiv_`).
#[allow(clippy::too_many_arguments)] // PyTorch's own signature: state, step and four hyper-parameters
pub fn adam(
    param: &mut [f32],
    grad: &[f32],
    exp_avg: &mut [f32],
    exp_avg_sq: &mut [f32],
    step: u64,
    lr: f64,
    (beta1, beta2): (f32, f32),
    eps: f32,
    weight_decay: f32,
) {
    let t = step as f64;
    let (beta1, beta2) = (as_written(beta1), as_written(beta2));
    let step_size = (lr / (1.0 - beta1.powf(t))) as f32;
    let bias_correction2_sqrt = (1.0 - beta2.powf(t)).sqrt() as f32;
    // lerp with weight < 0.5 is `m + w·(g − m)` in PyTorch's kernel.
    let lerp_weight = (1.0 - beta1) as f32;
    let (beta2_f32, one_minus_beta2) = (beta2 as f32, (1.0 - beta2) as f32);
    for i in 0..param.len() {
        let g = grad[i] + weight_decay * param[i];
        exp_avg[i] += lerp_weight * (g - exp_avg[i]);
        exp_avg_sq[i] = exp_avg_sq[i] * beta2_f32 + one_minus_beta2 * (g * g);
        let denom = exp_avg_sq[i].sqrt() / bias_correction2_sqrt + eps;
        param[i] += -step_size * (exp_avg[i] / denom);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{NodeId, ParamKind};

    fn close(a: &[f32], b: &[f32]) {
        // Tolerance 1e-6 relative: the hand computations below are exact decimals, and f32
        // rounding of each intermediate step stays far below it.
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-6 * y.abs().max(1.0), "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn sgd_plain_and_with_weight_decay() {
        let mut p = vec![1.0, -2.0];
        sgd(&mut p, &[0.5, 0.25], &mut None, 0.1, 0.0, 0.0);
        close(&p, &[0.95, -2.025]);
        // g = 0.5 + 0.01·1 = 0.51 → 1 − 0.1·0.51
        let mut p = vec![1.0];
        sgd(&mut p, &[0.5], &mut None, 0.1, 0.0, 0.01);
        close(&p, &[0.949]);
    }

    #[test]
    fn sgd_momentum_buffer_starts_at_the_first_gradient() {
        let mut p = vec![1.0];
        let mut buffer = None;
        sgd(&mut p, &[1.0], &mut buffer, 0.1, 0.9, 0.0);
        // b = 1, θ = 1 − 0.1 = 0.9
        close(&p, &[0.9]);
        assert_eq!(buffer, Some(vec![1.0]));
        sgd(&mut p, &[2.0], &mut buffer, 0.1, 0.9, 0.0);
        // b = 0.9·1 + 2 = 2.9, θ = 0.9 − 0.29 = 0.61
        close(&p, &[0.61]);
        close(buffer.as_deref().unwrap_or(&[]), &[2.9]);
    }

    #[test]
    fn adam_first_two_steps_by_hand() {
        let (mut p, mut m, mut v) = (vec![1.0f32], vec![0.0f32], vec![0.0f32]);
        // t=1, g=0.5: m=0.05, v=0.00025, m̂=0.5, √v̂=0.5 → θ = 1 − 0.1·0.5/(0.5+1e-8)
        adam(
            &mut p,
            &[0.5],
            &mut m,
            &mut v,
            1,
            0.1,
            (0.9, 0.999),
            1e-8,
            0.0,
        );
        close(&m, &[0.05]);
        close(&v, &[0.00025]);
        close(&p, &[1.0 - 0.1 * 0.5 / (0.5 + 1e-8)]);
        // t=2, g=−1: m = 0.05 + 0.1·(−1.05) = −0.055; v = 0.999·0.00025 + 0.001 = 0.00124975
        // θ = θ − (0.1/0.19)·m / (√v/√0.001999 + 1e-8)
        adam(
            &mut p,
            &[-1.0],
            &mut m,
            &mut v,
            2,
            0.1,
            (0.9, 0.999),
            1e-8,
            0.0,
        );
        close(&m, &[-0.055]);
        close(&v, &[0.00124975]);
        let expected =
            0.9 - (0.1 / 0.19) * -0.055 / ((0.00124975f64).sqrt() / (0.001999f64).sqrt() + 1e-8);
        close(&p, &[expected as f32]);
    }

    #[test]
    fn one_minus_beta_is_pythons() {
        // PyTorch: torch.tensor(1 - 0.999, dtype=torch.float32) == 0.0010000000475 (f32 of 0.001).
        assert_eq!((1.0 - as_written(0.999)) as f32, 0.001f32);
        assert_ne!(1.0 - 0.999f32, 0.001f32);
    }

    #[test]
    fn adam_weight_decay_is_l2_on_the_gradient() {
        // g = 0 + 0.5·2 = 1 → first Adam step moves by lr·1/(1+eps) whatever the scale.
        let (mut p, mut m, mut v) = (vec![2.0f32], vec![0.0f32], vec![0.0f32]);
        adam(
            &mut p,
            &[0.0],
            &mut m,
            &mut v,
            1,
            0.01,
            (0.9, 0.999),
            1e-8,
            0.5,
        );
        close(&p, &[2.0 - 0.01]);
        close(&m, &[0.1]);
    }

    fn params() -> Vec<Param> {
        let param = |name: &str, kind| Param {
            name: name.into(),
            shape: vec![1],
            kind,
            node: NodeId(1),
        };
        vec![
            param("bn1.weight", ParamKind::Weight),
            param("bn1.running_mean", ParamKind::RunningMean),
        ]
    }

    #[test]
    fn optimizer_skips_buffers_and_counts_adam_steps() {
        let config = ir::Optimizer::Adam {
            lr: 0.1,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
        };
        let mut opt = Optimizer::new(&config, &params());
        let (mut w, mut mean) = (vec![1.0f32], vec![3.0f32]);
        for _ in 0..2 {
            opt.begin_step();
            opt.step_param(0, &mut w, &[0.5]);
            opt.step_param(1, &mut mean, &[]);
        }
        assert_eq!(mean, vec![3.0]);
        let OptimizerState::Adam { step, exp_avg, .. } = opt.state() else {
            panic!("adam")
        };
        assert_eq!(*step, 2);
        assert!(exp_avg[1].is_empty());
        // Constant gradient: each bias-corrected Adam step moves by lr (±1e-6).
        assert!((w[0] - 0.8).abs() < 1e-6, "{}", w[0]);
    }

    #[test]
    fn resume_refuses_another_optimizers_state() {
        let sgd = ir::Optimizer::Sgd {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 0.0,
        };
        let adam = ir::Optimizer::Adam {
            lr: 0.1,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
        };
        let mut opt = Optimizer::new(&sgd, &params());
        let err = opt
            .resume(OptimizerState::new(&adam, &params()))
            .expect_err("adam into sgd");
        assert!(err.to_string().contains("adam"), "{err}");
        let short = OptimizerState::Sgd {
            momentum_buffers: vec![None],
        };
        assert!(opt.resume(short).is_err());
        assert!(opt.resume(OptimizerState::new(&sgd, &params())).is_ok());
    }
}
