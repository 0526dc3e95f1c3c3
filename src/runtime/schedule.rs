//! The learning rate of each epoch, as `torch.optim.lr_scheduler` computes it when
//! `scheduler.step()` is called once after every epoch: in Python floats (f64), from the rates
//! as written (see [`as_written`]), with PyTorch's own recurrences rather than the closed
//! forms, so that the rates agree to the last bit (`tests/schedule.rs` checks them against
//! numbers printed by PyTorch, `scripts/schedule_golden.py`).
//!
//! - `StepLR(step_size=every, gamma)`: `lr_e = lr_{e−1}·gamma` when `e` is a multiple of
//!   `every`, else `lr_{e−1}`.
//! - `CosineAnnealingLR(T_max=epochs, eta_min=min_lr)`: `lr_e = (1 + cos(π·e/T)) /
//!   (1 + cos(π·(e−1)/T)) · (lr_{e−1} − min) + min`, the recurrence of the closed form
//!   `min + (lr_0 − min)(1 + cos(π·e/T))/2`.
//!
//! Epochs are counted from 0; `epochs` is T, the run's total (`--epochs` or the section's).

use crate::ir::Schedule;

/// The decimal the user wrote, as the Python float PyTorch would hold: `.cnn` values arrive
/// as f32, and the shortest decimal that rounds to the f32 is the number as written.
pub fn as_written(value: f32) -> f64 {
    value.to_string().parse().unwrap_or(f64::from(value))
}

/// The learning rate of epoch `epoch` (0-based) of a run of `epochs` epochs starting from
/// `lr`. The recurrence is replayed from epoch 0, so a resumed run gets the same rate as the
/// uninterrupted one.
pub fn lr_at(schedule: &Schedule, lr: f32, epochs: usize, epoch: usize) -> f64 {
    let base = as_written(lr);
    let mut rate = base;
    match *schedule {
        Schedule::Constant => {}
        Schedule::Step { every, gamma } => {
            let gamma = as_written(gamma);
            for e in 1..=epoch {
                if e % every == 0 {
                    rate *= gamma;
                }
            }
        }
        Schedule::Cosine { min_lr } => {
            let min = as_written(min_lr);
            let t = epochs as f64;
            let pi = std::f64::consts::PI;
            for e in 1..=epoch {
                let e_max = e as i64 - 1 - epochs as i64;
                // PyTorch's branch for the restart after T_max (never met within a run).
                rate = if e_max.rem_euclid(2 * epochs as i64) == 0 {
                    rate + (base - min) * (1.0 - (pi / t).cos()) / 2.0
                } else {
                    (1.0 + (pi * e as f64 / t).cos()) / (1.0 + (pi * (e as f64 - 1.0) / t).cos())
                        * (rate - min)
                        + min
                };
            }
        }
    }
    rate
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_is_the_rate_as_written() {
        for e in 0..5 {
            assert_eq!(lr_at(&Schedule::Constant, 0.1, 5, e), 0.1);
        }
    }

    /// A constant schedule changes nothing: SGD rounds the rate back to the f32 it was
    /// written as (checked over every 97th f32 from 1e-8 to 10), and Adam forms it as before.
    #[test]
    fn the_written_rate_rounds_back_to_its_f32() {
        let (low, high) = (1e-8f32.to_bits(), 10f32.to_bits());
        for bits in (low..high).step_by(97) {
            let x = f32::from_bits(bits);
            assert_eq!(as_written(x) as f32, x, "{x:e}");
        }
    }

    /// The recurrences stay within rounding of the closed forms.
    #[test]
    fn the_recurrences_follow_the_closed_forms() {
        let step = Schedule::Step {
            every: 3,
            gamma: 0.5,
        };
        for e in 0..10 {
            let closed = 0.05 * 0.5f64.powi((e / 3) as i32);
            assert!((lr_at(&step, 0.05, 10, e) - closed).abs() < 1e-15);
        }
        let cosine = Schedule::Cosine { min_lr: 0.001 };
        for e in 0..15 {
            let closed = 0.001
                + (0.05 - 0.001) * (1.0 + (std::f64::consts::PI * e as f64 / 15.0).cos()) / 2.0;
            let rate = lr_at(&cosine, 0.05, 15, e);
            assert!(
                (rate - closed).abs() < 1e-15,
                "epoch {e}: {rate} vs {closed}"
            );
        }
    }
}
