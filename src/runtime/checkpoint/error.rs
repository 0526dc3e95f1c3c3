//! Why a checkpoint could not be written or read.

use std::fmt;
use std::path::PathBuf;

/// Why a checkpoint could not be written or read. Tensor-level variants name the tensor.
#[derive(Debug)]
pub enum CheckpointError {
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Not a safetensors file, or one cut short.
    Corrupt {
        path: PathBuf,
        reason: String,
    },
    Missing {
        path: PathBuf,
        tensor: String,
    },
    Unexpected {
        path: PathBuf,
        tensor: String,
        suggestion: Option<String>,
    },
    WrongShape {
        path: PathBuf,
        tensor: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    WrongDtype {
        path: PathBuf,
        tensor: String,
        found: String,
    },
    /// Metadata that does not parse, optimiser tensors without their metadata, or a number of
    /// tensors handed to `save` that is not the network's number of parameters.
    Inconsistent {
        path: PathBuf,
        reason: String,
    },
}

impl fmt::Display for CheckpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use CheckpointError::*;
        match self {
            Io { path, source } => write!(f, "{}: {source}", path.display()),
            Corrupt { path, reason } => write!(
                f,
                "{}: truncated or corrupt safetensors file: {reason}",
                path.display()
            ),
            Missing { path, tensor } => write!(f, "{}: missing tensor `{tensor}`", path.display()),
            Unexpected {
                path,
                tensor,
                suggestion,
            } => {
                write!(
                    f,
                    "{}: tensor `{tensor}` is not a parameter of this network",
                    path.display()
                )?;
                match suggestion {
                    Some(name) => write!(f, " (did you mean `{name}`?)"),
                    None => Ok(()),
                }
            }
            WrongShape {
                path,
                tensor,
                expected,
                found,
            } => write!(
                f,
                "{}: tensor `{tensor}` has shape {found:?}, the network expects {expected:?}",
                path.display()
            ),
            WrongDtype {
                path,
                tensor,
                found,
            } => {
                write!(
                    f,
                    "{}: tensor `{tensor}` is {found}, expected F32",
                    path.display()
                )
            }
            Inconsistent { path, reason } => write!(f, "{}: {reason}", path.display()),
        }
    }
}

impl std::error::Error for CheckpointError {}
