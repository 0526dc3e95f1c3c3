//! IDX files, the format of MNIST and Fashion-MNIST: a 4-byte magic number
//! (`0x00 0x00 <type> <rank>`), `rank` big-endian u32 dimensions, then the values in C order.
//! cnnc reads unsigned bytes (type `0x08`): images of rank 3 (`N×H×W`) and labels of rank 1.
//! Files may be gzip-compressed; that is detected by gzip's magic bytes, not by the file name.

use super::{DataError, Dataset, Labels};
use flate2::read::MultiGzDecoder;
use std::io::Read;
use std::path::{Path, PathBuf};

/// `0x00 0x00 0x08 0x03`: unsigned bytes, 3 dimensions.
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// `0x00 0x00 0x08 0x01`: unsigned bytes, 1 dimension.
pub const LABELS_MAGIC: u32 = 0x0000_0801;
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// The contents of a file, decompressed if it is gzip.
fn read_bytes(path: &Path) -> Result<Vec<u8>, DataError> {
    let raw = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if !raw.starts_with(&GZIP_MAGIC) {
        return Ok(raw);
    }
    let mut bytes = Vec::new();
    MultiGzDecoder::new(raw.as_slice())
        .read_to_end(&mut bytes)
        .map_err(|e| DataError::Corrupt {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    Ok(bytes)
}

/// Parses an IDX byte array with the given magic number; returns the dimensions and the
/// values. The header is checked against the file's length before anything is allocated.
pub fn parse<'a>(
    bytes: &'a [u8],
    expected_magic: u32,
    path: &Path,
) -> Result<(Vec<usize>, &'a [u8]), DataError> {
    let path_buf = || path.to_path_buf();
    let word = |i: usize| -> Option<u32> {
        let b = bytes.get(4 * i..4 * i + 4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let magic = word(0).ok_or(DataError::WrongSize {
        path: path_buf(),
        expected: 4,
        found: bytes.len(),
    })?;
    if magic != expected_magic {
        return Err(DataError::BadMagic {
            path: path_buf(),
            found: magic,
            expected: expected_magic,
        });
    }
    let rank = (magic & 0xff) as usize;
    let header = 4 * (1 + rank);
    let dims: Vec<u32> = (1..=rank).map_while(word).collect();
    if dims.len() < rank {
        return Err(DataError::WrongSize {
            path: path_buf(),
            expected: header,
            found: bytes.len(),
        });
    }
    let payload = dims
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d as usize))
        .and_then(|n| n.checked_add(header))
        .ok_or_else(|| DataError::DimsOverflow {
            path: path_buf(),
            dims: dims.clone(),
        })?;
    if bytes.len() != payload {
        return Err(DataError::WrongSize {
            path: path_buf(),
            expected: payload,
            found: bytes.len(),
        });
    }
    Ok((dims.iter().map(|&d| d as usize).collect(), &bytes[header..]))
}

/// Reads an images file (`N×H×W` bytes) and a labels file (`N` bytes) into a dataset of
/// `[1, H, W]` samples, pixels scaled to [0, 1] as byte/255 (torchvision's `ToTensor`).
/// With `classes` given, a label `≥ classes` is an error; otherwise the classes are
/// `0..=max label` (a user's data set, checked against the network later).
pub fn load_pair(
    images_path: &Path,
    labels_path: &Path,
    classes: Option<usize>,
) -> Result<Dataset, DataError> {
    let image_bytes = read_bytes(images_path)?;
    let (dims, pixels) = parse(&image_bytes, IMAGES_MAGIC, images_path)?;
    let label_bytes = read_bytes(labels_path)?;
    let (label_dims, labels) = parse(&label_bytes, LABELS_MAGIC, labels_path)?;
    if dims[0] != label_dims[0] {
        return Err(DataError::CountMismatch {
            images: images_path.display().to_string(),
            labels: labels_path.display().to_string(),
            image_count: dims[0],
            label_count: label_dims[0],
        });
    }
    let classes = classes.unwrap_or_else(|| labels.iter().max().map_or(0, |&m| usize::from(m) + 1));
    if let Some(index) = labels.iter().position(|&l| usize::from(l) >= classes) {
        return Err(DataError::LabelOutOfRange {
            what: labels_path.display().to_string(),
            index,
            label: i64::from(labels[index]),
            classes,
        });
    }
    Ok(Dataset {
        images: pixels.iter().map(|&p| f32::from(p) / 255.0).collect(),
        sample_shape: vec![1, dims[1], dims[2]],
        labels: Labels::Classes {
            values: labels.iter().map(|&l| u32::from(l)).collect(),
            classes,
        },
    })
}

/// The one file in `folder` whose name starts with one of `prefixes` (`.gz` or not).
fn find(folder: &Path, prefixes: &[&str]) -> Result<Option<PathBuf>, DataError> {
    let entries = std::fs::read_dir(folder).map_err(|source| DataError::Io {
        path: folder.to_path_buf(),
        source,
    })?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            prefixes.iter().any(|prefix| name.starts_with(prefix))
        })
        .collect();
    found.sort();
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => Err(DataError::BadArray {
            path: folder.to_path_buf(),
            name: prefixes[0].to_string(),
            reason: format!("several candidate files: {found:?}; keep one"),
        }),
    }
}

/// Loads a folder of IDX files named as MNIST's: `train-images*` and `train-labels*` (required),
/// `t10k-images*` and `t10k-labels*` or `test-images*` and `test-labels*` (optional test set).
/// `classes` as in [`load_pair`].
pub fn load_folder(
    folder: &Path,
    classes: Option<usize>,
) -> Result<(Dataset, Option<Dataset>), DataError> {
    let required = |prefix: &str| {
        find(folder, &[prefix])?.ok_or_else(|| DataError::Missing {
            what: format!("`{prefix}-*` IDX file"),
            path: folder.to_path_buf(),
        })
    };
    let train = load_pair(
        &required("train-images")?,
        &required("train-labels")?,
        classes,
    )?;
    let test = match (
        find(folder, &["t10k-images", "test-images"])?,
        find(folder, &["t10k-labels", "test-labels"])?,
    ) {
        (Some(images), Some(labels)) => Some(load_pair(&images, &labels, classes)?),
        (None, None) => None,
        (Some(_), None) | (None, Some(_)) => {
            return Err(DataError::Missing {
                what: "pair of test images and labels (only one of the two is there)".into(),
                path: folder.to_path_buf(),
            })
        }
    };
    Ok((train, test))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use std::io::Write;

    fn idx(magic: u32, dims: &[u32], payload: &[u8]) -> Vec<u8> {
        let mut bytes = magic.to_be_bytes().to_vec();
        for d in dims {
            bytes.extend(d.to_be_bytes());
        }
        bytes.extend(payload);
        bytes
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(bytes).expect("gzip");
        encoder.finish().expect("gzip")
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("cnnc-idx-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    #[test]
    fn parses_images_and_scales_pixels_like_to_tensor() {
        let dir = temp_dir("pair");
        let images = dir.join("img");
        let labels = dir.join("lab");
        std::fs::write(&images, idx(IMAGES_MAGIC, &[2, 1, 2], &[0, 255, 51, 102])).expect("write");
        std::fs::write(&labels, gzip(&idx(LABELS_MAGIC, &[2], &[7, 3]))).expect("write");
        let data = load_pair(&images, &labels, Some(10)).expect("load");
        assert_eq!(data.sample_shape, vec![1, 1, 2]);
        assert_eq!(data.images, vec![0.0, 1.0, 0.2, 0.4]);
        assert_eq!(
            data.labels,
            Labels::Classes {
                values: vec![7, 3],
                classes: 10
            }
        );
    }

    #[test]
    fn wrong_magic_names_both_numbers() {
        let bytes = idx(LABELS_MAGIC, &[1], &[0]);
        let err = parse(&bytes, IMAGES_MAGIC, Path::new("x")).expect_err("labels are not images");
        assert!(matches!(
            err,
            DataError::BadMagic {
                found: LABELS_MAGIC,
                expected: IMAGES_MAGIC,
                ..
            }
        ));
        assert!(err.to_string().contains("0x00000801"), "{err}");
    }

    #[test]
    fn truncated_header_and_payload_and_trailing_bytes() {
        let full = idx(IMAGES_MAGIC, &[2, 2, 2], &[1; 8]);
        for cut in [2, 9, full.len() - 1] {
            let err = parse(&full[..cut], IMAGES_MAGIC, Path::new("x")).expect_err("truncated");
            assert!(err.to_string().contains("truncated"), "cut {cut}: {err}");
        }
        let mut long = full.clone();
        long.push(0);
        let err = parse(&long, IMAGES_MAGIC, Path::new("x")).expect_err("trailing byte");
        assert!(err.to_string().contains("1 bytes after"), "{err}");
        assert!(parse(&full, IMAGES_MAGIC, Path::new("x")).is_ok());
    }

    #[test]
    fn dimensions_that_overflow_are_refused_without_allocating() {
        let bytes = idx(0x0000_0804, &[u32::MAX; 4], &[]);
        let err = parse(&bytes, 0x0000_0804, Path::new("x")).expect_err("overflow");
        assert!(matches!(err, DataError::DimsOverflow { .. }));
    }

    #[test]
    fn count_mismatch_and_labels_out_of_range() {
        let dir = temp_dir("mismatch");
        let images = dir.join("img");
        let labels = dir.join("lab");
        std::fs::write(&images, idx(IMAGES_MAGIC, &[2, 1, 1], &[0, 0])).expect("write");
        std::fs::write(&labels, idx(LABELS_MAGIC, &[3], &[0, 1, 2])).expect("write");
        let err = load_pair(&images, &labels, None).expect_err("2 images, 3 labels");
        assert!(matches!(
            err,
            DataError::CountMismatch {
                image_count: 2,
                label_count: 3,
                ..
            }
        ));
        std::fs::write(&labels, idx(LABELS_MAGIC, &[2], &[0, 10])).expect("write");
        let err = load_pair(&images, &labels, Some(10)).expect_err("label 10");
        assert!(matches!(
            err,
            DataError::LabelOutOfRange {
                index: 1,
                label: 10,
                ..
            }
        ));
        let user = load_pair(&images, &labels, None).expect("a user's 11 classes");
        assert!(matches!(user.labels, Labels::Classes { classes: 11, .. }));
    }

    #[test]
    fn corrupt_gzip_is_reported() {
        let dir = temp_dir("gz");
        let path = dir.join("img.gz");
        let compressed = gzip(&idx(IMAGES_MAGIC, &[1, 4, 4], &[9; 16]));
        std::fs::write(&path, &compressed[..compressed.len() / 2]).expect("write");
        let labels = dir.join("lab");
        std::fs::write(&labels, idx(LABELS_MAGIC, &[1], &[0])).expect("write");
        let err = load_pair(&path, &labels, None).expect_err("half a gzip stream");
        assert!(matches!(err, DataError::Corrupt { .. }), "{err}");
    }

    #[test]
    fn folder_needs_train_files_and_a_full_test_pair() {
        let dir = temp_dir("folder");
        let err = load_folder(&dir, None).expect_err("empty folder");
        assert!(err.to_string().contains("train-images"), "{err}");
        std::fs::write(
            dir.join("train-images-idx3-ubyte"),
            idx(IMAGES_MAGIC, &[1, 1, 1], &[5]),
        )
        .expect("write");
        std::fs::write(
            dir.join("train-labels-idx1-ubyte.gz"),
            gzip(&idx(LABELS_MAGIC, &[1], &[4])),
        )
        .expect("write");
        let (train, test) = load_folder(&dir, None).expect("train only");
        assert_eq!(train.len(), 1);
        assert!(test.is_none());
        std::fs::write(
            dir.join("t10k-images-idx3-ubyte"),
            idx(IMAGES_MAGIC, &[1, 1, 1], &[5]),
        )
        .expect("write");
        assert!(matches!(
            load_folder(&dir, None),
            Err(DataError::Missing { .. })
        ));
    }

    #[test]
    fn committed_mnist_sample_reads_the_known_first_digits() {
        let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/mnist");
        let (train, test) = load_folder(&folder, Some(10)).expect("tests/data/mnist");
        let test = test.expect("t10k files");
        assert_eq!((train.len(), test.len()), (512, 256));
        assert_eq!(train.sample_shape, vec![1, 28, 28]);
        let Labels::Classes { values, .. } = &train.labels else {
            panic!("classes")
        };
        // The first MNIST training digits are 5 0 4 1 9 2 1 3 1 4.
        assert_eq!(values[..10], [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]);
        // Row 5 of the first image, columns 12..16: bytes 3, 18, 18, 18.
        let row5: Vec<f32> = train.images[5 * 28 + 12..5 * 28 + 16].to_vec();
        assert_eq!(
            row5,
            [3.0 / 255.0, 18.0 / 255.0, 18.0 / 255.0, 18.0 / 255.0]
        );
        assert!(train.images.iter().all(|&p| (0.0..=1.0).contains(&p)));
    }
}
