//! The file layer of checkpoints: f32 tensors serialised with safetensors, written atomically.

use super::CheckpointError;
use safetensors::tensor::{Dtype, View};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

/// An f32 tensor borrowed for serialisation.
pub(super) struct F32<'a> {
    pub shape: Vec<usize>,
    pub values: &'a [f32],
}

impl View for F32<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Owned(self.values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }
    fn data_len(&self) -> usize {
        self.values.len() * 4
    }
}

/// Writes `bytes` to `<path>.tmp`, syncs it, and renames it over `path`.
pub(super) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    if let Err(source) = write() {
        // Best effort: the temporary file is garbage now; the error that matters is `source`.
        let _ = std::fs::remove_file(&tmp);
        return Err(CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        });
    }
    // Make the rename itself durable. Some file systems cannot sync a directory; the data is
    // already safe in the file, so that failure is not worth reporting.
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if let Ok(dir) = std::fs::File::open(folder) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Serialises named tensors (and metadata) to `path`, atomically. The same tensors and
/// metadata give the same bytes (see [`sort_metadata`]).
pub(super) fn save_tensors(
    path: &Path,
    tensors: Vec<(String, F32<'_>)>,
    metadata: HashMap<String, String>,
) -> Result<(), CheckpointError> {
    let as_written = serde_json::to_string(&metadata).expect("strings serialise");
    let sorted: BTreeMap<&String, &String> = metadata.iter().collect();
    let sorted = serde_json::to_string(&sorted).expect("strings serialise");
    let metadata = (!metadata.is_empty()).then_some(metadata);
    let mut bytes = safetensors::tensor::serialize(tensors, metadata).map_err(|e| {
        CheckpointError::Corrupt {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }
    })?;
    sort_metadata(&mut bytes, &as_written, &sorted);
    write_atomically(path, &bytes)
}

/// The header's `__metadata__` object with its keys in order: safetensors writes the map in
/// its hash order, which changes from run to run, so two identical checkpoints differed in a
/// few header bytes. `as_written` is that object as serialised from the same map (the same
/// order), `sorted` the same entries sorted, the same length; the header is otherwise
/// untouched.
fn sort_metadata(bytes: &mut [u8], as_written: &str, sorted: &str) {
    let header_len = bytes.get(..8).map_or(0, |n| {
        u64::from_le_bytes(n.try_into().expect("8 bytes")) as usize
    });
    let Some(header) = bytes.get_mut(8..8 + header_len) else {
        return;
    };
    let needle = format!("\"__metadata__\":{as_written}");
    if let Some(at) = header
        .windows(needle.len())
        .position(|w| w == needle.as_bytes())
    {
        let start = at + needle.len() - as_written.len();
        header[start..start + sorted.len()].copy_from_slice(sorted.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("cnnc-atomic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir.join(name)
    }

    fn tmp_of(path: &Path) -> std::path::PathBuf {
        let mut tmp = path.as_os_str().to_os_string();
        tmp.push(".tmp");
        tmp.into()
    }

    /// Saved twice from maps built in different orders (and so, most likely, iterated in
    /// different orders): the same bytes, with the metadata's keys sorted.
    #[test]
    fn the_same_tensors_and_metadata_give_the_same_bytes() {
        let values = [1.0f32, 2.0, 3.0];
        let keys: Vec<String> = (0..12).map(|k| format!("cnnc.key{k:02}")).collect();
        let save = |name: &str, order: &mut dyn Iterator<Item = &String>| {
            let path = temp(name);
            let metadata = order.map(|k| (k.clone(), format!("v{k}"))).collect();
            let tensor = F32 {
                shape: vec![3],
                values: &values,
            };
            save_tensors(&path, vec![("w".into(), tensor)], metadata).expect("saves");
            std::fs::read(&path).expect("reads")
        };
        let forward = save("forward.safetensors", &mut keys.iter());
        let backward = save("backward.safetensors", &mut keys.iter().rev());
        assert_eq!(forward, backward);
        let text = String::from_utf8_lossy(&forward);
        let positions: Vec<usize> = keys
            .iter()
            .map(|k| text.find(k.as_str()).unwrap())
            .collect();
        assert!(positions.windows(2).all(|p| p[0] < p[1]), "{text}");
        let (_, header) = safetensors::SafeTensors::read_metadata(&forward).expect("parses");
        assert_eq!(header.metadata().as_ref().map(HashMap::len), Some(12));
    }

    #[test]
    fn replaces_the_target_and_leaves_no_temporary_file() {
        let path = temp("w.bin");
        std::fs::write(tmp_of(&path), b"stale, from an interrupted save").expect("write");
        write_atomically(&path, b"first").expect("write");
        write_atomically(&path, b"second").expect("write");
        assert_eq!(std::fs::read(&path).expect("read"), b"second");
        assert!(!tmp_of(&path).exists());
    }

    #[test]
    fn a_failed_write_names_the_target_and_leaves_nothing() {
        let path = temp("no-such-folder").join("w.bin");
        let err = write_atomically(&path, b"x").expect_err("missing folder");
        assert!(err.to_string().contains("no-such-folder"), "{err}");
        assert!(!path.exists() && !tmp_of(&path).exists());
    }
}
