//! Training and test data: where it comes from, how it is checked against the network, and
//! how it is cut into shuffled batches.
//!
//! Sources (`data = ...` or `--data`):
//! - `mnist`, `fashion-mnist`: gzip IDX files in the data folder ([`datasets`]);
//! - a path (relative to the `.cnn` file): a folder of IDX files ([`idx`]) or an `.npz` with
//!   `x`, `y` and optionally `x_test`, `y_test` ([`npz`]);
//! - `synthetic`: seeded random data of the network's shapes ([`synthetic`]).
//!
//! Images become `f32` in N×C×spatial order (NCHW). When the network's spatial size differs
//! from the images', they are resized bilinearly ([`resize`]) and a note says so.

pub mod datasets;
pub mod idx;
pub mod npz;
pub mod resize;
pub mod synthetic;

use crate::ir::{DataSource, Graph, Loss, Shape};
use crate::runtime::{rng, Stream};
use rand::seq::SliceRandom;
use std::fmt;
use std::path::{Path, PathBuf};

/// Samples and their labels, in memory.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// `len() × sample_shape` values, sample after sample, each in C order.
    pub images: Vec<f32>,
    /// One sample's shape: `[C, *spatial]`, the network's `input` once loaded.
    pub sample_shape: Vec<usize>,
    pub labels: Labels,
}

/// What the network is trained to predict.
#[derive(Clone, Debug, PartialEq)]
pub enum Labels {
    /// One class per sample, for cross-entropy; every value is `< classes`.
    Classes { values: Vec<u32>, classes: usize },
    /// One target tensor of `shape` per sample, for mean squared error.
    Targets { values: Vec<f32>, shape: Vec<usize> },
}

impl Dataset {
    /// Number of samples.
    pub fn len(&self) -> usize {
        match &self.labels {
            Labels::Classes { values, .. } => values.len(),
            Labels::Targets { values, shape } => {
                values.len() / shape.iter().product::<usize>().max(1)
            }
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Values per sample.
    pub fn sample_len(&self) -> usize {
        self.sample_shape.iter().product()
    }
    /// Copies the samples `indices` (in that order) into `batch`, reusing its buffers.
    pub fn gather(&self, indices: &[usize], batch: &mut Batch) {
        let size = self.sample_len();
        batch.images.clear();
        for &i in indices {
            batch
                .images
                .extend_from_slice(&self.images[i * size..(i + 1) * size]);
        }
        batch.len = indices.len();
        match &self.labels {
            Labels::Classes { values, .. } => {
                batch.classes.clear();
                batch.classes.extend(indices.iter().map(|&i| values[i]));
                batch.targets.clear();
            }
            Labels::Targets { values, shape } => {
                let target = shape.iter().product::<usize>();
                batch.targets.clear();
                for &i in indices {
                    batch
                        .targets
                        .extend_from_slice(&values[i * target..(i + 1) * target]);
                }
                batch.classes.clear();
            }
        }
    }

    /// Checks that the labels fit the network's output and the loss: classes need
    /// cross-entropy and an output `[K]` with `K ≥ classes` (every label `< K`); targets need
    /// mean squared error and the output's shape.
    pub fn check_labels(&self, output: &Shape, loss: Loss, what: &str) -> Result<(), DataError> {
        let mismatch = |reason: String| {
            Err(DataError::Mismatch {
                what: what.to_string(),
                reason,
            })
        };
        match (&self.labels, loss) {
            (Labels::Classes { values, .. }, Loss::CrossEntropy) => {
                let [units] = output.0[..] else {
                    return mismatch(format!("class labels need an output of shape [classes], the network gives {output}"));
                };
                match values.iter().position(|&v| v as usize >= units) {
                    Some(index) => Err(DataError::LabelOutOfRange {
                        what: what.to_string(),
                        index,
                        label: i64::from(values[index]),
                        classes: units,
                    }),
                    None => Ok(()),
                }
            }
            (Labels::Targets { shape, .. }, Loss::Mse) if shape[..] == output.0[..] => Ok(()),
            (Labels::Targets { shape, .. }, Loss::Mse) => mismatch(format!(
                "targets of shape {} do not match the network's output {output}",
                Shape(shape.clone())
            )),
            (Labels::Classes { .. }, Loss::Mse) => mismatch(
                "integer class labels need `loss = cross_entropy`; mse needs float targets".into(),
            ),
            (Labels::Targets { .. }, Loss::CrossEntropy) => mismatch(
                "float targets need `loss = mse`; cross_entropy needs integer class labels".into(),
            ),
        }
    }
}

/// One batch, gathered by [`Dataset::gather`]: `len` samples; `classes` or `targets` is filled
/// depending on the dataset's labels, the other left empty.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Batch {
    pub images: Vec<f32>,
    pub classes: Vec<u32>,
    pub targets: Vec<f32>,
    pub len: usize,
}

/// The sample order of epoch `epoch` (0-based): a seeded permutation, a function of
/// `(seed, epoch)` alone, so a resumed run sees the same order. Cut it with `chunks(batch)`:
/// the last, partial batch is kept (PyTorch's `drop_last=False`).
pub fn epoch_order(len: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    order.shuffle(&mut rng(seed, Stream::Shuffle { epoch }));
    order
}

/// Loaded data, ready for training.
#[derive(Clone, Debug, PartialEq)]
pub struct Splits {
    pub train: Dataset,
    pub test: Option<Dataset>,
    /// Things the user should be told once (e.g. that images were resized).
    pub notes: Vec<String>,
}

/// Loads `source` for `graph` trained with `loss`: images shaped (and resized if need be) to
/// the network's input, labels checked against its output. Relative paths are resolved against
/// `base_dir` (the `.cnn` file's folder); `mnist` and `fashion-mnist` are looked up in
/// [`datasets::data_dir`].
pub fn load(
    source: &DataSource,
    base_dir: &Path,
    graph: &Graph,
    loss: Loss,
    seed: u64,
) -> Result<Splits, DataError> {
    let input = &graph.input().shape;
    let (train, test) = match source {
        DataSource::Mnist => datasets::load(datasets::Named::Mnist, &datasets::data_dir())?,
        DataSource::FashionMnist => {
            datasets::load(datasets::Named::FashionMnist, &datasets::data_dir())?
        }
        DataSource::Path(path) => load_path(&base_dir.join(path))?,
        DataSource::Synthetic => synthetic::generate(input, graph.output_shape(), loss, seed)?,
    };
    let mut notes = Vec::new();
    let train = resize::fit_to_input(train, input, "training data", &mut notes)?;
    let test = test
        .map(|t| resize::fit_to_input(t, input, "test data", &mut notes))
        .transpose()?;
    train.check_labels(graph.output_shape(), loss, "training data")?;
    if let Some(test) = &test {
        test.check_labels(graph.output_shape(), loss, "test data")?;
    }
    Ok(Splits { train, test, notes })
}

fn load_path(path: &Path) -> Result<(Dataset, Option<Dataset>), DataError> {
    if path.is_dir() {
        idx::load_folder(path, None)
    } else if path.is_file() {
        npz::load(path)
    } else {
        Err(DataError::NotFound {
            path: path.to_path_buf(),
        })
    }
}

/// Why data could not be loaded. Every variant names the file, array or dataset at fault.
#[derive(Debug)]
pub enum DataError {
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `--data PATH` names nothing.
    NotFound { path: PathBuf },
    /// `mnist` or `fashion-mnist` is not in the data folder.
    MissingDataset {
        name: &'static str,
        folder: PathBuf,
        command: String,
    },
    /// An IDX file whose first four bytes are not the expected magic number.
    BadMagic {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
    /// A file shorter (or longer) than its header says.
    WrongSize {
        path: PathBuf,
        expected: usize,
        found: usize,
    },
    /// IDX dimensions whose product does not fit in memory addresses.
    DimsOverflow { path: PathBuf, dims: Vec<u32> },
    /// A gzip stream that does not decompress.
    Corrupt { path: PathBuf, reason: String },
    /// Images and labels that do not pair up.
    CountMismatch {
        images: String,
        labels: String,
        image_count: usize,
        label_count: usize,
    },
    /// A class label outside `0..classes`.
    LabelOutOfRange {
        what: String,
        index: usize,
        label: i64,
        classes: usize,
    },
    /// A folder without the expected files, or an `.npz` without a required array.
    Missing { what: String, path: PathBuf },
    /// An array of the wrong type or rank, or a folder with two candidates for one file.
    BadArray {
        path: PathBuf,
        name: String,
        reason: String,
    },
    /// Data that does not fit the network (shape, channels, loss).
    Mismatch { what: String, reason: String },
}

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use DataError::*;
        match self {
            Io { path, source } => write!(f, "{}: {source}", path.display()),
            NotFound { path } => write!(
                f,
                "data `{}` not found: expected a folder of IDX files or an .npz file",
                path.display()
            ),
            MissingDataset { name, folder, command } => write!(
                f,
                "the {name} dataset is not in {}; fetch it with `{command}` (or set CNNC_DATA to the folder that holds it)",
                folder.display()
            ),
            BadMagic { path, found, expected } => write!(
                f,
                "{}: not an IDX file of this kind: magic number {found:#010x}, expected {expected:#010x}",
                path.display()
            ),
            WrongSize { path, expected, found } if found < expected => write!(
                f,
                "{}: truncated: the header describes {expected} bytes, the file has {found}",
                path.display()
            ),
            WrongSize { path, expected, found } => write!(
                f,
                "{}: {} bytes after the {expected} bytes the header describes",
                path.display(),
                found - expected
            ),
            DimsOverflow { path, dims } => {
                write!(f, "{}: dimensions {dims:?} are too large to be real", path.display())
            }
            Corrupt { path, reason } => write!(f, "{}: corrupt gzip data: {reason}", path.display()),
            CountMismatch { images, labels, image_count, label_count } => write!(
                f,
                "{images} holds {image_count} images but {labels} holds {label_count} labels"
            ),
            LabelOutOfRange { what, index, label, classes } => write!(
                f,
                "{what}: label {label} of sample {index} is outside 0..{classes} (the network has {classes} outputs)"
            ),
            Missing { what, path } => write!(f, "{}: no {what}", path.display()),
            BadArray { path, name, reason } => write!(f, "{}: `{name}`: {reason}", path.display()),
            Mismatch { what, reason } => write!(f, "{what}: {reason}"),
        }
    }
}

impl std::error::Error for DataError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn classes(values: Vec<u32>, classes: usize) -> Dataset {
        let n = values.len();
        Dataset {
            images: (0..n * 2).map(|v| v as f32).collect(),
            sample_shape: vec![1, 2],
            labels: Labels::Classes { values, classes },
        }
    }

    #[test]
    fn epoch_order_is_a_seeded_permutation() {
        let order = epoch_order(100, 3, 0);
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_eq!(order, epoch_order(100, 3, 0));
        assert_ne!(order, epoch_order(100, 3, 1));
        assert_ne!(order, epoch_order(100, 4, 0));
    }

    #[test]
    fn batches_keep_the_last_partial_one_and_gather_in_order() {
        let data = classes(vec![0, 1, 2, 3, 4], 5);
        let order = [4, 0, 3, 1, 2];
        let mut batch = Batch::default();
        let sizes: Vec<usize> = order
            .chunks(2)
            .map(|chunk| {
                data.gather(chunk, &mut batch);
                batch.len
            })
            .collect();
        assert_eq!(sizes, vec![2, 2, 1]);
        assert_eq!(batch.images, vec![4.0, 5.0]);
        assert_eq!(batch.classes, vec![2]);
        data.gather(&order[..2], &mut batch);
        assert_eq!(batch.images, vec![8.0, 9.0, 0.0, 1.0]);
        assert_eq!(batch.classes, vec![4, 0]);
    }

    #[test]
    fn targets_are_gathered_per_sample() {
        let data = Dataset {
            images: vec![0.0, 1.0, 2.0],
            sample_shape: vec![1],
            labels: Labels::Targets {
                values: vec![10.0, 11.0, 20.0, 21.0, 30.0, 31.0],
                shape: vec![2],
            },
        };
        assert_eq!(data.len(), 3);
        let mut batch = Batch::default();
        data.gather(&[2, 0], &mut batch);
        assert_eq!(batch.targets, vec![30.0, 31.0, 10.0, 11.0]);
        assert!(batch.classes.is_empty());
    }

    #[test]
    fn labels_are_checked_against_output_and_loss() {
        let data = classes(vec![0, 9, 3], 10);
        assert!(data
            .check_labels(&Shape(vec![10]), Loss::CrossEntropy, "train")
            .is_ok());
        let err = data
            .check_labels(&Shape(vec![5]), Loss::CrossEntropy, "train")
            .expect_err("9 ≥ 5");
        assert!(matches!(
            err,
            DataError::LabelOutOfRange {
                index: 1,
                label: 9,
                classes: 5,
                ..
            }
        ));
        assert!(err.to_string().contains("label 9 of sample 1"), "{err}");
        assert!(matches!(
            data.check_labels(&Shape(vec![10]), Loss::Mse, "train"),
            Err(DataError::Mismatch { .. })
        ));
        assert!(matches!(
            data.check_labels(&Shape(vec![10, 2, 2]), Loss::CrossEntropy, "train"),
            Err(DataError::Mismatch { .. })
        ));
        let targets = Dataset {
            images: vec![0.0],
            sample_shape: vec![1],
            labels: Labels::Targets {
                values: vec![1.0, 2.0],
                shape: vec![1, 2],
            },
        };
        assert!(targets
            .check_labels(&Shape(vec![1, 2]), Loss::Mse, "t")
            .is_ok());
        assert!(targets
            .check_labels(&Shape(vec![2, 1]), Loss::Mse, "t")
            .is_err());
        assert!(targets
            .check_labels(&Shape(vec![1, 2]), Loss::CrossEntropy, "t")
            .is_err());
    }

    /// A network from `.cnn` text, built by the front end.
    fn graph(text: &str) -> Graph {
        let mut sources = crate::span::SourceMap::default();
        let mut graphs = crate::load_str("t.cnn", text, &mut sources).expect("valid network");
        graphs.remove(0)
    }

    #[test]
    fn load_resolves_paths_against_the_cnn_folder_and_resizes_once() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let source = DataSource::Path("data/fashion-mnist".into());
        let splits = load(
            &source,
            &root.join("tests"),
            &graph("network t { input [1, 32, 32]; flatten; dense 10 }"),
            Loss::CrossEntropy,
            0,
        )
        .expect("tests/data/fashion-mnist");
        assert_eq!(splits.train.sample_shape, vec![1, 32, 32]);
        assert_eq!(splits.train.images.len(), 512 * 32 * 32);
        assert_eq!(splits.test.as_ref().map(Dataset::len), Some(256));
        assert_eq!(splits.notes.len(), 1, "{:?}", splits.notes);
        let err = load(
            &source,
            &root.join("tests"),
            &graph("network t { input [1, 28, 28]; flatten; dense 5 }"),
            Loss::CrossEntropy,
            0,
        )
        .expect_err("10 classes into 5 outputs");
        assert!(
            matches!(err, DataError::LabelOutOfRange { classes: 5, .. }),
            "{err}"
        );
    }

    #[test]
    fn load_edge_npz_and_synthetic_for_mse() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut sources = crate::span::SourceMap::default();
        let edge = crate::load_file(&root.join("models/edge.cnn"), &mut sources)
            .expect("models/edge.cnn")
            .remove(0);
        let train = edge.train.clone().expect("edge.cnn has a train section");
        assert_eq!(
            (&train.data, train.loss),
            (&DataSource::Path("edge.npz".into()), Loss::Mse)
        );
        let splits = load(
            &train.data,
            &root.join("models"),
            &edge,
            train.loss,
            train.seed,
        )
        .expect("edge");
        assert_eq!(splits.train.len(), 1);
        assert!(splits.notes.is_empty());
        let synthetic = load(&DataSource::Synthetic, root, &edge, Loss::Mse, 0).expect("synthetic");
        assert_eq!(synthetic.train.sample_shape, vec![1, 6, 8]);
    }

    #[test]
    fn a_path_that_is_nothing_is_named() {
        let err = load_path(Path::new("/nonexistent/cnnc/data")).expect_err("missing");
        assert!(err.to_string().contains("/nonexistent/cnnc/data"), "{err}");
    }
}
