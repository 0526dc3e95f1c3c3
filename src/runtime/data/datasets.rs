//! The named datasets, `mnist` and `fashion-mnist`, looked up in the data folder:
//!
//! ```text
//! $CNNC_DATA (if set, else ./data)/
//!   mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz
//!   fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz
//! ```
//!
//! `python3 scripts/fetch_data.py mnist|fashion-mnist [--dir DIR]` puts them there; a missing
//! dataset is an error that names that command.

use super::{idx, DataError, Dataset};
use std::path::{Path, PathBuf};

/// The environment variable that overrides the data folder.
pub const DATA_ENV: &str = "CNNC_DATA";

/// Both named datasets have 10 classes.
const CLASSES: usize = 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Named {
    Mnist,
    FashionMnist,
}

impl Named {
    /// The name used in `data = ...`, in the data folder and by the fetch script.
    pub fn name(self) -> &'static str {
        match self {
            Named::Mnist => "mnist",
            Named::FashionMnist => "fashion-mnist",
        }
    }
}

/// `$CNNC_DATA` if set (and not empty), else `./data`.
pub fn data_dir() -> PathBuf {
    match std::env::var_os(DATA_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from("data"),
    }
}

/// The command that fetches `which` into `data_dir`.
pub fn fetch_command(which: Named, data_dir: &Path) -> String {
    format!(
        "python3 scripts/fetch_data.py {} --dir {}",
        which.name(),
        data_dir.display()
    )
}

/// Loads the training and test sets of `which` from `data_dir/<name>/`.
pub fn load(which: Named, data_dir: &Path) -> Result<(Dataset, Option<Dataset>), DataError> {
    let folder = data_dir.join(which.name());
    let load_split = |split: &str| {
        let images = folder.join(format!("{split}-images-idx3-ubyte.gz"));
        let labels = folder.join(format!("{split}-labels-idx1-ubyte.gz"));
        if !images.is_file() || !labels.is_file() {
            return Err(DataError::MissingDataset {
                name: which.name(),
                folder: folder.clone(),
                command: fetch_command(which, data_dir),
            });
        }
        idx::load_pair(&images, &labels, Some(CLASSES))
    };
    Ok((load_split("train")?, Some(load_split("t10k")?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed samples use the same layout as the data folder.
    fn samples() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
    }

    #[test]
    fn both_named_datasets_load_from_a_data_folder() {
        for which in [Named::Mnist, Named::FashionMnist] {
            let (train, test) = load(which, &samples()).expect("committed samples");
            assert_eq!(train.len(), 512, "{}", which.name());
            assert_eq!(test.map(|t| t.len()), Some(256));
            assert_eq!(train.sample_shape, vec![1, 28, 28]);
        }
    }

    #[test]
    fn fashion_mnist_first_labels_are_the_published_ones() {
        let (train, _) = load(Named::FashionMnist, &samples()).expect("samples");
        let super::super::Labels::Classes { values, .. } = train.labels else {
            panic!("classes")
        };
        // Fashion-MNIST's first training labels: ankle boot, t-shirt, t-shirt, dress, t-shirt.
        assert_eq!(values[..5], [9, 0, 0, 3, 0]);
    }

    #[test]
    fn a_missing_dataset_names_the_fetch_command() {
        let empty = std::env::temp_dir().join(format!("cnnc-no-data-{}", std::process::id()));
        let err = load(Named::FashionMnist, &empty).expect_err("nothing there");
        let message = err.to_string();
        assert!(
            message.contains(&format!(
                "python3 scripts/fetch_data.py fashion-mnist --dir {}",
                empty.display()
            )),
            "{message}"
        );
    }
}
