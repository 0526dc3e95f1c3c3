//! A network judged on a dataset in inference mode (dropout off, batchnorm running
//! statistics), in batches: accuracy and the confusion matrix for classes, the mean squared
//! error for targets. Used by `cnnc eval` and for the test accuracy of every training epoch.

use crate::runtime::data::{Batch, Dataset, Labels};
use crate::runtime::engine::EngineError;
use crate::runtime::engines::Engines;

/// How the network did on a dataset.
#[derive(Clone, Debug, PartialEq)]
pub enum Evaluation {
    Classes(Confusion),
    Targets {
        /// Mean over every element of every sample, as `nn.MSELoss`.
        mean_squared_error: f64,
        samples: usize,
    },
}

/// Counts of (true class, predicted class) pairs.
#[derive(Clone, Debug, PartialEq)]
pub struct Confusion {
    /// Rows and columns: the network's output units (at least the dataset's classes).
    pub classes: usize,
    /// `counts[truth * classes + predicted]`.
    pub counts: Vec<u64>,
}

impl Confusion {
    pub fn new(classes: usize) -> Confusion {
        Confusion {
            classes,
            counts: vec![0; classes * classes],
        }
    }
    pub fn add(&mut self, truth: usize, predicted: usize) {
        self.counts[truth * self.classes + predicted] += 1;
    }
    pub fn count(&self, truth: usize, predicted: usize) -> u64 {
        self.counts[truth * self.classes + predicted]
    }
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }
    pub fn correct(&self) -> u64 {
        (0..self.classes).map(|c| self.count(c, c)).sum()
    }
    /// Fraction correct, in [0, 1]; 0 for no samples.
    pub fn accuracy(&self) -> f64 {
        match self.total() {
            0 => 0.0,
            total => self.correct() as f64 / total as f64,
        }
    }
}

/// The index of the largest value (the first one on ties, as `torch.argmax`). NaN is never
/// the largest, so a broken output predicts class 0 rather than panicking.
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] || (row[best].is_nan() && !v.is_nan()) {
            best = i;
        }
    }
    best
}

/// Runs `data` through the network in inference mode in batches of `batch` samples (the last
/// one partial if need be) and compares the outputs with the labels.
pub fn evaluate(
    engines: &mut Engines,
    data: &Dataset,
    batch: usize,
) -> Result<Evaluation, EngineError> {
    let order: Vec<usize> = (0..data.len()).collect();
    let mut gathered = Batch::default();
    let mut squared_error = 0.0;
    // Sized by the network's output on the first batch: it may have more units than the data
    // has classes (the loader checks that every label is below it).
    let mut confusion: Option<Confusion> = None;
    for chunk in order.chunks(batch.max(1)) {
        data.gather(chunk, &mut gathered);
        let output = engines.get(chunk.len())?.infer(&gathered.images)?;
        match &data.labels {
            Labels::Targets { .. } => {
                squared_error += output
                    .iter()
                    .zip(&gathered.targets)
                    .map(|(&y, &t)| (f64::from(y) - f64::from(t)).powi(2))
                    .sum::<f64>();
            }
            Labels::Classes { .. } => {
                let units = output.len() / chunk.len();
                let matrix = confusion.get_or_insert_with(|| Confusion::new(units));
                for (row, &truth) in output.chunks(units).zip(&gathered.classes) {
                    matrix.add(truth as usize, argmax(row));
                }
            }
        }
    }
    Ok(match &data.labels {
        Labels::Targets { values, .. } => Evaluation::Targets {
            mean_squared_error: squared_error / values.len().max(1) as f64,
            samples: data.len(),
        },
        Labels::Classes { classes, .. } => {
            Evaluation::Classes(confusion.unwrap_or_else(|| Confusion::new(*classes)))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Graph, Loss};
    use crate::span::SourceMap;

    #[test]
    fn argmax_takes_the_first_maximum_and_ignores_nan() {
        assert_eq!(argmax(&[0.1, 0.7, 0.7, 0.2]), 1);
        assert_eq!(argmax(&[f32::NAN, 1.0, 0.5]), 1);
        assert_eq!(argmax(&[f32::NAN, f32::NAN]), 0);
    }

    fn linear() -> Graph {
        let text = "network linear { input [3]; dense 3 bias=false }";
        crate::load_str("linear.cnn", text, &mut SourceMap::default())
            .expect("checks")
            .remove(0)
    }

    /// With a known weight the predictions are known: the identity maps each one-hot sample to
    /// its own class, and a label set to another class lands off the diagonal. Five samples in
    /// batches of 2 exercise the partial last batch.
    #[test]
    fn confusion_matrix_counts_every_sample_once() {
        let graph = linear();
        let identity = vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0];
        let mut engines = Engines::new(&graph, Loss::CrossEntropy, 1, 2, &[identity]).unwrap();
        let hot = |c: usize| (0..3).map(move |i| if i == c { 1.0 } else { 0.0 });
        let samples = [0usize, 1, 2, 2, 1];
        let data = Dataset {
            images: samples.iter().flat_map(|&c| hot(c)).collect(),
            sample_shape: vec![3],
            labels: Labels::Classes {
                values: vec![0, 1, 2, 0, 1],
                classes: 3,
            },
        };
        let Evaluation::Classes(confusion) = evaluate(&mut engines, &data, 2).unwrap() else {
            panic!("class labels give a confusion matrix")
        };
        assert_eq!(confusion.total(), 5);
        assert_eq!(confusion.correct(), 4);
        assert_eq!(confusion.count(0, 2), 1, "label 0, predicted 2");
        assert!((confusion.accuracy() - 0.8).abs() < 1e-12);
    }
}
