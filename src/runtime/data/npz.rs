//! A user's data as one `.npz` (`np.savez(path, x=..., y=..., x_test=..., y_test=...)`):
//!
//! - `x`: float32 (or float64, converted) samples `[N, *sample]`, e.g. `[N, C, H, W]`;
//! - `y`: integer class labels `[N]` (int64, int32 or uint8) for cross-entropy, or float
//!   targets `[N, *target]` for mean squared error;
//! - `x_test`, `y_test`: optional, the same for the test set (both or neither).
//!
//! Arrays may be stored in C or Fortran order (`np.asfortranarray`, or a transposed array
//! saved as is): numpy reads both to the same values, so cnnc does too, converting Fortran
//! order to the row-major layout the engine uses.

use super::{DataError, Dataset, Labels};
use crate::runtime::tensors::{read_stored, ArraySource, Stored, TensorError};
use ndarray::ArrayD;
use ndarray_npy::{NpzReader, ReadNpyError, ReadNpzError};
use std::fs::File;
use std::path::{Path, PathBuf};

/// One named member of an open `.npz`, decoded as whichever type its header says.
struct Member<'a> {
    reader: &'a mut NpzReader<File>,
    name: &'a str,
}

/// Zip-level failures become I/O errors of the member, so [`read_stored`] reports them.
fn npy(e: ReadNpzError) -> ReadNpyError {
    match e {
        ReadNpzError::Npy(e) => e,
        ReadNpzError::Zip(e) => ReadNpyError::Io(std::io::Error::other(e)),
    }
}

impl ArraySource for Member<'_> {
    fn read_f32(&mut self) -> Result<ArrayD<f32>, ReadNpyError> {
        self.reader.by_name(self.name).map_err(npy)
    }
    fn read_f64(&mut self) -> Result<ArrayD<f64>, ReadNpyError> {
        self.reader.by_name(self.name).map_err(npy)
    }
    fn read_i64(&mut self) -> Result<ArrayD<i64>, ReadNpyError> {
        self.reader.by_name(self.name).map_err(npy)
    }
    fn read_i32(&mut self) -> Result<ArrayD<i32>, ReadNpyError> {
        self.reader.by_name(self.name).map_err(npy)
    }
    fn read_u8(&mut self) -> Result<ArrayD<u8>, ReadNpyError> {
        self.reader.by_name(self.name).map_err(npy)
    }
}

fn io_error(path: &Path, source: std::io::Error) -> DataError {
    DataError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn tensor_error(e: TensorError, path: &Path, name: &str) -> DataError {
    match e {
        TensorError::Io { source, .. } => io_error(path, source),
        other => DataError::BadArray {
            path: path.to_path_buf(),
            name: name.to_string(),
            reason: other.to_string(),
        },
    }
}

/// Loads `x`, `y` and, if present, `x_test`, `y_test`.
pub fn load(path: &Path) -> Result<(Dataset, Option<Dataset>), DataError> {
    let file = File::open(path).map_err(|e| io_error(path, e))?;
    let mut reader = NpzReader::new(file).map_err(|e| DataError::BadArray {
        path: path.to_path_buf(),
        name: "(archive)".into(),
        reason: format!("not an .npz (zip) file: {e}"),
    })?;
    let names = reader.names().map_err(|e| DataError::BadArray {
        path: path.to_path_buf(),
        name: "(archive)".into(),
        reason: e.to_string(),
    })?;
    let mut read = |name: &str| -> Result<Option<Stored>, DataError> {
        if !names.iter().any(|n| n == name) {
            return Ok(None);
        }
        // The member's own name in errors: `data.npz:x`.
        let member_path = PathBuf::from(format!("{}:{name}", path.display()));
        let mut member = Member {
            reader: &mut reader,
            name,
        };
        read_stored(&mut member, &member_path)
            .map(Some)
            .map_err(|e| tensor_error(e, path, name))
    };
    let missing = |name: &str| DataError::Missing {
        what: format!("array `{name}` (arrays: {names:?})"),
        path: path.to_path_buf(),
    };
    let x = read("x")?.ok_or_else(|| missing("x"))?;
    let y = read("y")?.ok_or_else(|| missing("y"))?;
    let train = dataset(path, ("x", x), ("y", y))?;
    let test = match (read("x_test")?, read("y_test")?) {
        (Some(x), Some(y)) => Some(dataset(path, ("x_test", x), ("y_test", y))?),
        (None, None) => None,
        (Some(_), None) => return Err(missing("y_test")),
        (None, Some(_)) => return Err(missing("x_test")),
    };
    Ok((train, test))
}

/// Pairs samples and labels into a dataset, checking their types, ranks and counts.
fn dataset(
    path: &Path,
    (x_name, x): (&str, Stored),
    (y_name, y): (&str, Stored),
) -> Result<Dataset, DataError> {
    let bad = |name: &str, reason: String| DataError::BadArray {
        path: path.to_path_buf(),
        name: name.to_string(),
        reason,
    };
    let x = match x {
        Stored::Float32(a) => a,
        Stored::Float64(a) => a.mapv(|v| v as f32),
        Stored::Int(_) => {
            return Err(bad(
                x_name,
                "samples must be float32 (scale integer pixels to [0, 1] first)".into(),
            ))
        }
    };
    if x.ndim() < 2 {
        return Err(bad(
            x_name,
            format!("shape {:?}: expected [N, *sample]", x.shape()),
        ));
    }
    let count = x.shape()[0];
    let label_count = y.shape().first().copied().unwrap_or(0);
    if y.shape().is_empty() || label_count != count {
        return Err(DataError::CountMismatch {
            images: format!("`{x_name}` in {}", path.display()),
            labels: format!("`{y_name}`"),
            image_count: count,
            label_count,
        });
    }
    let labels = match y {
        Stored::Int(labels) => {
            if labels.ndim() != 1 {
                return Err(bad(
                    y_name,
                    format!("class labels of shape {:?}: expected [N]", labels.shape()),
                ));
            }
            if let Some(index) = labels
                .iter()
                .position(|&l| !(0..=i64::from(u32::MAX)).contains(&l))
            {
                return Err(DataError::LabelOutOfRange {
                    what: format!("`{y_name}` in {}", path.display()),
                    index,
                    label: labels[index],
                    classes: labels.iter().max().map_or(0, |&m| m.max(0) as usize + 1),
                });
            }
            Labels::Classes {
                classes: labels.iter().max().map_or(0, |&m| m as usize + 1),
                values: labels.iter().map(|&l| l as u32).collect(),
            }
        }
        Stored::Float32(targets) => Labels::Targets {
            shape: targets.shape()[1..].to_vec(),
            values: targets.iter().copied().collect(),
        },
        Stored::Float64(targets) => Labels::Targets {
            shape: targets.shape()[1..].to_vec(),
            values: targets.iter().map(|&v| v as f32).collect(),
        },
    };
    Ok(Dataset {
        sample_shape: x.shape()[1..].to_vec(),
        images: x.iter().copied().collect(),
        labels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{ArrayD, IxDyn};
    use ndarray_npy::NpzWriter;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("cnnc-npz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir.join(name)
    }

    fn x(n: usize) -> ArrayD<f32> {
        ArrayD::from_shape_fn(IxDyn(&[n, 1, 2, 2]), |i| i[0] as f32 + 0.5 * i[3] as f32)
    }

    #[test]
    fn classes_with_a_test_set() {
        let path = temp("classes.npz");
        let mut npz = NpzWriter::new(File::create(&path).expect("create"));
        npz.add_array("x", &x(3)).expect("x");
        npz.add_array("y", &ndarray::arr1(&[2i64, 0, 1]))
            .expect("y");
        npz.add_array("x_test", &x(1)).expect("x_test");
        npz.add_array("y_test", &ndarray::arr1(&[1u8]))
            .expect("y_test");
        npz.finish().expect("finish");
        let (train, test) = load(&path).expect("load");
        assert_eq!(train.sample_shape, vec![1, 2, 2]);
        assert_eq!(train.images[4..8], [1.0, 1.5, 1.0, 1.5]);
        assert_eq!(
            train.labels,
            Labels::Classes {
                values: vec![2, 0, 1],
                classes: 3
            }
        );
        assert_eq!(test.expect("test").len(), 1);
    }

    #[test]
    fn float_targets_without_test_set() {
        let path = temp("targets.npz");
        let mut npz = NpzWriter::new(File::create(&path).expect("create"));
        npz.add_array("x", &x(2)).expect("x");
        npz.add_array("y", &ArrayD::<f32>::ones(IxDyn(&[2, 1, 2, 1])))
            .expect("y");
        npz.finish().expect("finish");
        let (train, test) = load(&path).expect("load");
        assert_eq!(
            train.labels,
            Labels::Targets {
                values: vec![1.0; 4],
                shape: vec![1, 2, 1]
            }
        );
        assert!(test.is_none());
    }

    /// A Fortran-order `x` and `y` (as numpy writes a transposed array) read as the same
    /// values numpy would give, in C order.
    #[test]
    fn fortran_order_arrays_read_as_their_values() {
        let path = temp("fortran.npz");
        let values = x(3);
        let fortran_x = values
            .view()
            .reversed_axes()
            .as_standard_layout()
            .into_owned()
            .reversed_axes();
        assert!(!fortran_x.is_standard_layout());
        assert_eq!(fortran_x, values);
        let targets = ArrayD::from_shape_fn(IxDyn(&[3, 2]), |i| (10 * i[0] + i[1]) as f32);
        let fortran_y = targets
            .t()
            .as_standard_layout()
            .into_owned()
            .reversed_axes();
        let mut npz = NpzWriter::new(File::create(&path).expect("create"));
        npz.add_array("x", &fortran_x).expect("x");
        npz.add_array("y", &fortran_y).expect("y");
        npz.finish().expect("finish");
        let (train, _) = load(&path).expect("load");
        assert_eq!(train.sample_shape, vec![1, 2, 2]);
        assert_eq!(train.images, values.iter().copied().collect::<Vec<_>>());
        assert_eq!(
            train.labels,
            Labels::Targets {
                values: vec![0.0, 1.0, 10.0, 11.0, 20.0, 21.0],
                shape: vec![2]
            }
        );
    }

    #[test]
    fn errors_name_the_array() {
        let write = |name: &str, arrays: &[(&str, Stored)]| {
            let path = temp(name);
            let mut npz = NpzWriter::new(File::create(&path).expect("create"));
            for (n, a) in arrays {
                match a {
                    Stored::Float32(a) => npz.add_array(*n, a),
                    Stored::Float64(a) => npz.add_array(*n, a),
                    Stored::Int(a) => npz.add_array(*n, a),
                }
                .expect("add");
            }
            npz.finish().expect("finish");
            load(&path).expect_err("must fail").to_string()
        };
        let labels = |v: &[i64]| Stored::Int(ndarray::arr1(v).into_dyn());
        let message = write("no_y.npz", &[("x", Stored::Float32(x(2)))]);
        assert!(message.contains("array `y`"), "{message}");
        let message = write(
            "count.npz",
            &[("x", Stored::Float32(x(2))), ("y", labels(&[0, 1, 2]))],
        );
        assert!(
            message.contains("2 images") && message.contains("3 labels"),
            "{message}"
        );
        let message = write(
            "negative.npz",
            &[("x", Stored::Float32(x(2))), ("y", labels(&[0, -1]))],
        );
        assert!(message.contains("label -1 of sample 1"), "{message}");
        let message = write(
            "int_x.npz",
            &[("x", labels(&[1, 2])), ("y", labels(&[0, 1]))],
        );
        assert!(
            message.contains("`x`") && message.contains("float32"),
            "{message}"
        );
        let message = write(
            "half_test.npz",
            &[
                ("x", Stored::Float32(x(2))),
                ("y", labels(&[0, 1])),
                ("x_test", Stored::Float32(x(1))),
            ],
        );
        assert!(message.contains("y_test"), "{message}");
    }

    #[test]
    fn edge_npz_is_d2ls_x_and_its_cross_correlation_with_1_minus_1() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/edge.npz");
        let (train, test) = load(&path).expect("models/edge.npz");
        assert!(test.is_none());
        assert_eq!(train.sample_shape, vec![1, 6, 8]);
        let x = &train.images;
        for (i, &v) in x.iter().enumerate() {
            assert_eq!(
                v,
                if (2..=5).contains(&(i % 8)) { 0.0 } else { 1.0 },
                "x[{i}]"
            );
        }
        let Labels::Targets { values: y, shape } = &train.labels else {
            panic!("float targets")
        };
        assert_eq!(shape, &vec![1, 6, 7]);
        for row in 0..6 {
            for col in 0..7 {
                assert_eq!(
                    y[row * 7 + col],
                    x[row * 8 + col] - x[row * 8 + col + 1],
                    "y[{row}][{col}]"
                );
            }
        }
    }

    #[test]
    fn not_a_zip_is_named() {
        let path = temp("garbage.npz");
        std::fs::write(&path, b"definitely not a zip").expect("write");
        let err = load(&path).expect_err("garbage");
        assert!(err.to_string().contains("garbage.npz"), "{err}");
    }
}
