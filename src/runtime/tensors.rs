//! `.npy` arrays in and out: float32 inputs and outputs of `cnnc forward`, integer labels of
//! `cnnc grad`, and the arrays inside a user's `.npz` (read through [`ArraySource`]).
//!
//! Arrays stored in Fortran order are accepted and returned in C (row-major) order, the layout
//! every other part of cnnc uses; what is written is always C order.

use ndarray::{ArrayD, ArrayViewD};
use ndarray_npy::{ReadNpyError, ReadNpyExt, WriteNpyExt};
use std::fmt;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

/// Why a `.npy` file could not be read or written. Every variant names the file.
#[derive(Debug)]
pub enum TensorError {
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The array's element type is not one this use accepts.
    WrongDtype {
        path: PathBuf,
        found: String,
        expected: &'static str,
    },
    /// The header promises more data than the file holds.
    Truncated { path: PathBuf },
    /// Not a `.npy` file, or a header or payload that does not parse.
    Corrupt { path: PathBuf, reason: String },
}

impl fmt::Display for TensorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TensorError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            TensorError::WrongDtype {
                path,
                found,
                expected,
            } => write!(
                f,
                "{}: the array holds {found}, expected {expected} (in NumPy: `a.astype(np.{})`)",
                path.display(),
                expected.split(' ').next().unwrap_or(expected)
            ),
            TensorError::Truncated { path } => {
                write!(
                    f,
                    "{}: truncated: the file ends before the data its header describes",
                    path.display()
                )
            }
            TensorError::Corrupt { path, reason } => {
                write!(f, "{}: not a valid .npy array: {reason}", path.display())
            }
        }
    }
}

impl std::error::Error for TensorError {}

/// An array with one of the element types cnnc reads, in C order.
#[derive(Clone, Debug, PartialEq)]
pub enum Stored {
    Float32(ArrayD<f32>),
    Float64(ArrayD<f64>),
    /// int64, int32 or uint8, widened.
    Int(ArrayD<i64>),
}

impl Stored {
    /// The NumPy name of the element type, for messages.
    pub fn dtype_name(&self) -> &'static str {
        match self {
            Stored::Float32(_) => "float32",
            Stored::Float64(_) => "float64",
            Stored::Int(_) => "integers",
        }
    }
    pub fn shape(&self) -> &[usize] {
        match self {
            Stored::Float32(a) => a.shape(),
            Stored::Float64(a) => a.shape(),
            Stored::Int(a) => a.shape(),
        }
    }
}

/// Something that can decode one `.npy` payload as a given element type: a file's bytes, or a
/// named member of an `.npz`. [`read_stored`] tries the accepted types in turn.
pub trait ArraySource {
    fn read_f32(&mut self) -> Result<ArrayD<f32>, ReadNpyError>;
    fn read_f64(&mut self) -> Result<ArrayD<f64>, ReadNpyError>;
    fn read_i64(&mut self) -> Result<ArrayD<i64>, ReadNpyError>;
    fn read_i32(&mut self) -> Result<ArrayD<i32>, ReadNpyError>;
    fn read_u8(&mut self) -> Result<ArrayD<u8>, ReadNpyError>;
}

impl ArraySource for &[u8] {
    fn read_f32(&mut self) -> Result<ArrayD<f32>, ReadNpyError> {
        ArrayD::read_npy(*self)
    }
    fn read_f64(&mut self) -> Result<ArrayD<f64>, ReadNpyError> {
        ArrayD::read_npy(*self)
    }
    fn read_i64(&mut self) -> Result<ArrayD<i64>, ReadNpyError> {
        ArrayD::read_npy(*self)
    }
    fn read_i32(&mut self) -> Result<ArrayD<i32>, ReadNpyError> {
        ArrayD::read_npy(*self)
    }
    fn read_u8(&mut self) -> Result<ArrayD<u8>, ReadNpyError> {
        ArrayD::read_npy(*self)
    }
}

/// Decodes `source` as float32, float64, int64, int32 or uint8, whichever its header says.
/// `path` names the file (or `file.npz:name`) in errors.
pub fn read_stored(source: &mut impl ArraySource, path: &Path) -> Result<Stored, TensorError> {
    let err = |e| npy_error(e, path);
    match source.read_f32() {
        Ok(a) => return Ok(Stored::Float32(c_order(a))),
        Err(ReadNpyError::WrongDescriptor(_)) => {}
        Err(e) => return Err(err(e)),
    }
    match source.read_f64() {
        Ok(a) => return Ok(Stored::Float64(c_order(a))),
        Err(ReadNpyError::WrongDescriptor(_)) => {}
        Err(e) => return Err(err(e)),
    }
    match source.read_i64() {
        Ok(a) => return Ok(Stored::Int(c_order(a))),
        Err(ReadNpyError::WrongDescriptor(_)) => {}
        Err(e) => return Err(err(e)),
    }
    match source.read_i32() {
        Ok(a) => return Ok(Stored::Int(c_order(a.mapv(i64::from)))),
        Err(ReadNpyError::WrongDescriptor(_)) => {}
        Err(e) => return Err(err(e)),
    }
    match source.read_u8() {
        Ok(a) => Ok(Stored::Int(c_order(a.mapv(i64::from)))),
        Err(ReadNpyError::WrongDescriptor(descr)) => Err(TensorError::WrongDtype {
            path: path.to_path_buf(),
            found: format!("dtype {descr}"),
            expected: "float32 or integers",
        }),
        Err(e) => Err(err(e)),
    }
}

/// The same array in C order (Fortran-order files are read with Fortran strides).
fn c_order<T: Clone>(array: ArrayD<T>) -> ArrayD<T> {
    if array.is_standard_layout() {
        array
    } else {
        array.as_standard_layout().into_owned()
    }
}

/// Maps ndarray-npy's read errors to ours, telling truncation apart from corruption.
pub(crate) fn npy_error(e: ReadNpyError, path: &Path) -> TensorError {
    let path = path.to_path_buf();
    match e {
        ReadNpyError::MissingData => TensorError::Truncated { path },
        ReadNpyError::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            TensorError::Truncated { path }
        }
        ReadNpyError::Io(source) => TensorError::Io { path, source },
        other => TensorError::Corrupt {
            path,
            reason: other.to_string(),
        },
    }
}

fn read_file(path: &Path) -> Result<Stored, TensorError> {
    let bytes = std::fs::read(path).map_err(|source| TensorError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    read_stored(&mut bytes.as_slice(), path)
}

/// Reads a float32 `.npy` (any rank), in C order.
pub fn read_f32(path: &Path) -> Result<ArrayD<f32>, TensorError> {
    match read_file(path)? {
        Stored::Float32(a) => Ok(a),
        other => Err(TensorError::WrongDtype {
            path: path.to_path_buf(),
            found: other.dtype_name().to_string(),
            expected: "float32",
        }),
    }
}

/// Reads integer labels (int64, int32 or uint8) from a `.npy`.
pub fn read_labels(path: &Path) -> Result<ArrayD<i64>, TensorError> {
    match read_file(path)? {
        Stored::Int(a) => Ok(a),
        other => Err(TensorError::WrongDtype {
            path: path.to_path_buf(),
            found: other.dtype_name().to_string(),
            expected: "int64 (or int32, uint8) labels",
        }),
    }
}

/// Writes a float32 `.npy` in C order.
pub fn write_f32(path: &Path, array: ArrayViewD<'_, f32>) -> Result<(), TensorError> {
    let io = |source| TensorError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::create(path).map_err(io)?;
    array
        .as_standard_layout()
        .write_npy(BufWriter::new(file))
        .map_err(|e| TensorError::Corrupt {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{ArrayD, IxDyn};

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("cnnc-tensors-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir.join(name)
    }

    fn npy_bytes<T: ndarray_npy::WritableElement>(a: &ArrayD<T>) -> Vec<u8> {
        let mut bytes = Vec::new();
        a.write_npy(&mut bytes).expect("write to memory");
        bytes
    }

    #[test]
    fn float32_round_trips_exactly() {
        let a = ArrayD::from_shape_fn(IxDyn(&[2, 3, 4]), |i| {
            (i[0] * 12 + i[1] * 4 + i[2]) as f32 * 0.25 - 1.0
        });
        let path = temp("round.npy");
        write_f32(&path, a.view()).expect("write");
        assert_eq!(read_f32(&path).expect("read"), a);
    }

    #[test]
    fn fortran_order_comes_back_in_c_order() {
        let c = ArrayD::from_shape_fn(IxDyn(&[2, 3]), |i| (i[0] * 3 + i[1]) as f32);
        let fortran = c.t().as_standard_layout().into_owned().reversed_axes();
        assert!(!fortran.is_standard_layout());
        let bytes = npy_bytes(&fortran.into_dyn());
        let header = String::from_utf8_lossy(&bytes[..128]);
        assert!(header.contains("'fortran_order': True"), "{header}");
        let Stored::Float32(read) =
            read_stored(&mut bytes.as_slice(), Path::new("f.npy")).expect("read")
        else {
            panic!("float32 expected");
        };
        assert!(read.is_standard_layout());
        assert_eq!(
            read.iter().copied().collect::<Vec<_>>(),
            vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
        );
    }

    #[test]
    fn float64_input_is_a_dtype_error_naming_the_file() {
        let path = temp("f64.npy");
        std::fs::write(&path, npy_bytes(&ArrayD::<f64>::zeros(IxDyn(&[2])))).expect("write");
        let err = read_f32(&path).expect_err("float64 must be refused");
        assert!(matches!(err, TensorError::WrongDtype { found, .. } if found == "float64"));
        assert!(read_f32(&path).unwrap_err().to_string().contains("f64.npy"));
    }

    #[test]
    fn labels_accept_int64_int32_uint8_and_refuse_floats() {
        let expected = ArrayD::from_shape_vec(IxDyn(&[3]), vec![0i64, 9, 3]).expect("shape");
        for bytes in [
            npy_bytes(&expected),
            npy_bytes(&expected.mapv(|v| v as i32)),
            npy_bytes(&expected.mapv(|v| v as u8)),
        ] {
            let path = temp("labels.npy");
            std::fs::write(&path, bytes).expect("write");
            assert_eq!(read_labels(&path).expect("labels"), expected);
        }
        let path = temp("float_labels.npy");
        std::fs::write(&path, npy_bytes(&expected.mapv(|v| v as f32))).expect("write");
        assert!(matches!(
            read_labels(&path),
            Err(TensorError::WrongDtype { .. })
        ));
    }

    #[test]
    fn unsupported_dtype_names_the_descriptor() {
        let bytes = npy_bytes(&ArrayD::<i16>::zeros(IxDyn(&[2])));
        let err = read_stored(&mut bytes.as_slice(), Path::new("x.npy")).expect_err("int16");
        assert!(err.to_string().contains("<i2"), "{err}");
    }

    #[test]
    fn truncated_and_garbage_files_are_told_apart() {
        let bytes = npy_bytes(&ArrayD::<f32>::zeros(IxDyn(&[4, 4])));
        let path = temp("short.npy");
        std::fs::write(&path, &bytes[..bytes.len() - 5]).expect("write");
        assert!(matches!(
            read_f32(&path),
            Err(TensorError::Truncated { .. })
        ));
        std::fs::write(&path, b"not an npy file at all").expect("write");
        assert!(matches!(read_f32(&path), Err(TensorError::Corrupt { .. })));
        let missing = temp("does-not-exist.npy");
        assert!(matches!(read_f32(&missing), Err(TensorError::Io { .. })));
    }
}
