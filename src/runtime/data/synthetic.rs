//! `data = synthetic`: seeded random data of the network's shapes, for trying a network (and
//! measuring its speed) without any download.
//!
//! There are `K` classes, where `K` is the network's output size (`[K]`; for mean squared error
//! any output shape, with K = 10). Each class has a random prototype image `p_k` with values in
//! [0, 1); a sample of class `k` is `0.5·p_k + 0.5·u` with fresh uniform noise `u`, so the
//! classes overlap but are learnable. For cross-entropy the label is `k`; for mean squared error
//! the target is a random per-class tensor of the output's shape with values in [−1, 1).
//! 512 training and 128 test samples are drawn from [`Stream::Synthetic`](crate::runtime::Stream).

use super::{DataError, Dataset, Labels};
use crate::ir::{Loss, Shape};
use crate::runtime::{rng, Stream};
use rand::RngExt;

pub const TRAIN_SAMPLES: usize = 512;
pub const TEST_SAMPLES: usize = 128;
/// Classes when the output shape does not give them (mean squared error).
const MSE_CLASSES: usize = 10;

/// Generates the training and test sets for a network with `input` and `output` shapes.
pub fn generate(
    input: &Shape,
    output: &Shape,
    loss: Loss,
    seed: u64,
) -> Result<(Dataset, Option<Dataset>), DataError> {
    let classes = match (loss, &output.0[..]) {
        (Loss::CrossEntropy, &[units]) if units > 0 => units,
        (Loss::CrossEntropy, _) => {
            return Err(DataError::Mismatch {
                what: "synthetic data".into(),
                reason: format!(
                    "cross-entropy needs an output of shape [classes], the network gives {output}"
                ),
            })
        }
        (Loss::Mse, _) => MSE_CLASSES,
    };
    let mut rng = rng(seed, Stream::Synthetic);
    let prototypes: Vec<Vec<f32>> = (0..classes)
        .map(|_| (0..input.numel()).map(|_| rng.random::<f32>()).collect())
        .collect();
    let targets: Vec<Vec<f32>> = (0..classes)
        .map(|_| {
            (0..output.numel())
                .map(|_| 2.0 * rng.random::<f32>() - 1.0)
                .collect()
        })
        .collect();
    let mut draw = |count: usize| {
        let mut images = Vec::with_capacity(count * input.numel());
        let mut chosen = Vec::with_capacity(count);
        for _ in 0..count {
            let class = rng.random_range(0..classes);
            images.extend(
                prototypes[class]
                    .iter()
                    .map(|&p| 0.5 * p + 0.5 * rng.random::<f32>()),
            );
            chosen.push(class);
        }
        let labels = match loss {
            Loss::CrossEntropy => Labels::Classes {
                values: chosen.iter().map(|&c| c as u32).collect(),
                classes,
            },
            Loss::Mse => Labels::Targets {
                values: chosen
                    .iter()
                    .flat_map(|&c| targets[c].iter().copied())
                    .collect(),
                shape: output.0.clone(),
            },
        };
        Dataset {
            images,
            sample_shape: input.0.clone(),
            labels,
        }
    };
    let train = draw(TRAIN_SAMPLES);
    let test = draw(TEST_SAMPLES);
    Ok((train, Some(test)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_labels_and_reproducibility() {
        let (input, output) = (Shape(vec![1, 4, 4]), Shape(vec![3]));
        let (train, test) = generate(&input, &output, Loss::CrossEntropy, 5).expect("generate");
        assert_eq!(train.len(), TRAIN_SAMPLES);
        assert_eq!(test.as_ref().map(Dataset::len), Some(TEST_SAMPLES));
        assert_eq!(train.images.len(), TRAIN_SAMPLES * 16);
        assert!(train.images.iter().all(|&v| (0.0..1.0).contains(&v)));
        let Labels::Classes { values, classes: 3 } = &train.labels else {
            panic!("3 classes")
        };
        assert!((0..3).all(|c| values.contains(&c)), "every class appears");
        assert_eq!(
            generate(&input, &output, Loss::CrossEntropy, 5)
                .expect("again")
                .0,
            train
        );
        assert_ne!(
            generate(&input, &output, Loss::CrossEntropy, 6)
                .expect("other seed")
                .0,
            train
        );
    }

    #[test]
    fn classes_are_learnable_by_nearest_prototype_mean() {
        // Samples of one class share the prototype half: class means of the training set must
        // classify the test set far better than chance (1/4).
        let (input, output) = (Shape(vec![1, 8, 8]), Shape(vec![4]));
        let (train, test) = generate(&input, &output, Loss::CrossEntropy, 1).expect("generate");
        let test = test.expect("test set");
        let labels = |d: &Dataset| match &d.labels {
            Labels::Classes { values, .. } => values.clone(),
            Labels::Targets { .. } => unreachable!("cross-entropy gives classes"),
        };
        let mut means = vec![vec![0.0f32; 64]; 4];
        let mut counts = [0usize; 4];
        for (sample, &label) in train.images.chunks(64).zip(&labels(&train)) {
            counts[label as usize] += 1;
            means[label as usize]
                .iter_mut()
                .zip(sample)
                .for_each(|(m, v)| *m += v);
        }
        means
            .iter_mut()
            .zip(counts)
            .for_each(|(m, c)| m.iter_mut().for_each(|v| *v /= c as f32));
        let distance =
            |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f32>();
        let correct = test
            .images
            .chunks(64)
            .zip(&labels(&test))
            .filter(|(sample, &label)| {
                (0..4).min_by(|&a, &b| {
                    distance(sample, &means[a]).total_cmp(&distance(sample, &means[b]))
                }) == Some(label as usize)
            })
            .count();
        assert!(
            correct * 10 > test.len() * 9,
            "{correct}/{} correct",
            test.len()
        );
    }

    #[test]
    fn mse_targets_have_the_output_shape_and_bad_outputs_are_refused() {
        let (train, _) =
            generate(&Shape(vec![1, 6, 8]), &Shape(vec![1, 6, 7]), Loss::Mse, 0).expect("mse");
        let Labels::Targets { values, shape } = &train.labels else {
            panic!("targets")
        };
        assert_eq!(shape, &vec![1, 6, 7]);
        assert_eq!(values.len(), TRAIN_SAMPLES * 42);
        let err = generate(
            &Shape(vec![1, 6, 8]),
            &Shape(vec![1, 6, 7]),
            Loss::CrossEntropy,
            0,
        )
        .expect_err("not [K]");
        assert!(matches!(err, DataError::Mismatch { .. }));
    }
}
