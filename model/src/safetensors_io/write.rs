//! Atomic writing of safetensors files and HF-layout checkpoint directories.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{byte_len, TensorToWrite, INDEX_FILE_NAME, SINGLE_FILE_NAME};
use crate::error::{ModelError, Result};

/// Writes one `.safetensors` file: header (tensors in name order, `__metadata__` first when given, keys sorted,
/// padded with spaces to a multiple of 8 bytes like the reference implementation), then the data in name order.
///
/// The write is atomic ([`atomicio::write_file_with`]: a temporary sibling is written, fsynced and renamed over
/// `path`). Inputs are validated before
/// anything is created (duplicate names, a tensor named `__metadata__`, data length != shape x dtype size); on
/// any error the temporary file is removed and `path` is left as it was.
pub fn write_safetensors(
    path: &Path,
    tensors: &[TensorToWrite],
    metadata: Option<&HashMap<String, String>>,
) -> Result<()> {
    let refs: Vec<&TensorToWrite> = tensors.iter().collect();
    write_file(path, &refs, metadata)
}

/// Writes a checkpoint into the existing directory `dir` in the HF layout and returns the written files.
///
/// When the tensors' total byte size is at most `max_shard_bytes` (or it is `None`) this is one
/// `model.safetensors`; otherwise shards `model-00001-of-0000N.safetensors` (tensors in name order, a new shard
/// started when the next tensor would exceed the limit; a tensor larger than the limit gets a shard of its own)
/// plus `model.safetensors.index.json` (`{"metadata": {"total_size": ..}, "weight_map": {name: shard}}`), written
/// last. `metadata` goes into every file's `__metadata__` (HF writes `{"format": "pt"}`). As `save_pretrained`
/// does, files of an earlier checkpoint in `dir` that the new one does not use (`model.safetensors`, the index,
/// `model-*-of-*.safetensors`) are removed after the new files are in place. Every file is written atomically.
pub fn write_checkpoint_dir(
    dir: &Path,
    tensors: &[TensorToWrite],
    metadata: Option<&HashMap<String, String>>,
    max_shard_bytes: Option<u64>,
) -> Result<Vec<PathBuf>> {
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(ModelError::Safetensors { path: dir.to_path_buf(), msg: "not a directory".into() }),
        Err(e) => return Err(ModelError::io(dir, e)),
    }
    let mut sorted: Vec<&TensorToWrite> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    check_tensors(dir, &sorted)?;
    let total: u64 = sorted.iter().map(|t| t.data.len() as u64).sum();

    let written = match max_shard_bytes {
        Some(max) if total > max => {
            let mut shards: Vec<Vec<&TensorToWrite>> = vec![Vec::new()];
            let mut cur = 0u64;
            for t in sorted {
                let n = t.data.len() as u64;
                let last_nonempty = shards.last().is_some_and(|s| !s.is_empty());
                if last_nonempty && cur + n > max {
                    shards.push(Vec::new());
                    cur = 0;
                }
                cur += n;
                if let Some(s) = shards.last_mut() {
                    s.push(t);
                }
            }
            let count = shards.len();
            let mut weight_map: BTreeMap<&str, String> = BTreeMap::new();
            let mut paths = Vec::with_capacity(count + 1);
            for (i, shard) in shards.iter().enumerate() {
                let name = format!("model-{:05}-of-{count:05}.safetensors", i + 1);
                let path = dir.join(&name);
                write_file(&path, shard, metadata)?;
                for t in shard {
                    weight_map.insert(&t.name, name.clone());
                }
                paths.push(path);
            }
            let index = serde_json::json!({
                "metadata": {"total_size": total},
                "weight_map": weight_map,
            });
            let mut text = serde_json::to_string_pretty(&index).map_err(|e| ModelError::Safetensors {
                path: dir.join(INDEX_FILE_NAME),
                msg: format!("cannot serialise index: {e}"),
            })?;
            text.push('\n');
            let index_path = dir.join(INDEX_FILE_NAME);
            atomicio::write_file(&index_path, text.as_bytes())?;
            paths.push(index_path);
            paths
        }
        _ => {
            let path = dir.join(SINGLE_FILE_NAME);
            write_file(&path, &sorted, metadata)?;
            vec![path]
        }
    };
    remove_stale(dir, &written)?;
    Ok(written)
}

/// Removes checkpoint files of our naming scheme in `dir` that are not in `keep`.
fn remove_stale(dir: &Path, keep: &[PathBuf]) -> Result<()> {
    let entries = fs::read_dir(dir).map_err(|e| ModelError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| ModelError::io(dir, e))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = name == SINGLE_FILE_NAME || name == INDEX_FILE_NAME || is_shard_name(&name);
        if ours && !keep.contains(&path) && path.is_file() {
            fs::remove_file(&path).map_err(|e| ModelError::io(&path, e))?;
        }
    }
    Ok(())
}

/// `model-DDDDD-of-DDDDD.safetensors`.
fn is_shard_name(name: &str) -> bool {
    let Some(mid) = name.strip_prefix("model-").and_then(|s| s.strip_suffix(".safetensors")) else {
        return false;
    };
    match mid.split_once("-of-") {
        Some((a, b)) => {
            !a.is_empty()
                && !b.is_empty()
                && a.bytes().all(|c| c.is_ascii_digit())
                && b.bytes().all(|c| c.is_ascii_digit())
        }
        None => false,
    }
}

/// Unique names, no `__metadata__`, and data lengths matching shape x dtype size. `path` names the target.
fn check_tensors(path: &Path, tensors: &[&TensorToWrite]) -> Result<()> {
    let mut seen = HashSet::with_capacity(tensors.len());
    for t in tensors {
        let err = |msg: String| ModelError::Tensor { path: path.to_path_buf(), tensor: t.name.clone(), msg };
        if t.name == "__metadata__" {
            return Err(err("`__metadata__` is reserved and cannot name a tensor".into()));
        }
        if !seen.insert(t.name.as_str()) {
            return Err(err("given twice".into()));
        }
        let need = byte_len(t.dtype, &t.shape)
            .ok_or_else(|| err(format!("shape {:?} is too large (byte size overflows)", t.shape)))?;
        if need != t.data.len() {
            return Err(err(format!(
                "dtype {} with shape {:?} needs {need} bytes but {} were given",
                t.dtype,
                t.shape,
                t.data.len()
            )));
        }
    }
    Ok(())
}

/// The padded header JSON for `tensors` (already sorted by name) laid out back to back.
fn header_bytes(tensors: &[&TensorToWrite], metadata: Option<&HashMap<String, String>>) -> Vec<u8> {
    fn quote(s: &str) -> String {
        // Serialising a str to JSON cannot fail.
        serde_json::to_string(s).unwrap_or_default()
    }
    let mut h = String::from("{");
    let mut first = true;
    if let Some(md) = metadata {
        let sorted: BTreeMap<&String, &String> = md.iter().collect();
        h.push_str("\"__metadata__\":{");
        for (i, (k, v)) in sorted.into_iter().enumerate() {
            if i > 0 {
                h.push(',');
            }
            h.push_str(&quote(k));
            h.push(':');
            h.push_str(&quote(v));
        }
        h.push('}');
        first = false;
    }
    let mut offset = 0usize;
    for t in tensors {
        if !first {
            h.push(',');
        }
        first = false;
        let shape: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
        let end = offset + t.data.len();
        h.push_str(&format!(
            "{}:{{\"dtype\":\"{}\",\"shape\":[{}],\"data_offsets\":[{offset},{end}]}}",
            quote(&t.name),
            t.dtype.name(),
            shape.join(",")
        ));
        offset = end;
    }
    h.push('}');
    let mut bytes = h.into_bytes();
    let pad = (8 - bytes.len() % 8) % 8;
    bytes.resize(bytes.len() + pad, b' ');
    bytes
}

/// Validates, sorts by name and writes one safetensors file atomically.
fn write_file(path: &Path, tensors: &[&TensorToWrite], metadata: Option<&HashMap<String, String>>) -> Result<()> {
    let mut sorted: Vec<&TensorToWrite> = tensors.to_vec();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    check_tensors(path, &sorted)?;
    let header = header_bytes(&sorted, metadata);
    atomicio::write_file_with(path, |w| {
        let mut put = |bytes: &[u8]| w.write_all(bytes).map_err(|e| ModelError::io(path, e));
        put(&(header.len() as u64).to_le_bytes())?;
        put(&header)?;
        for t in &sorted {
            put(&t.data)?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::super::{FileDType, SafetensorsReader, TensorToWrite};
    use super::*;

    fn sample() -> Vec<TensorToWrite<'static>> {
        let vals: Vec<f32> = (0..24).map(|i| (i as f32 - 7.3) * 0.37).collect();
        let ints: Vec<u8> = [-3i64, 0, 1 << 40].iter().flat_map(|v| v.to_le_bytes()).collect();
        vec![
            TensorToWrite::from_f32("b.weight", FileDType::BF16, vec![4, 6], &vals).unwrap(),
            TensorToWrite::from_f32("a.weight", FileDType::F32, vec![2, 3, 4], &vals).unwrap(),
            TensorToWrite::from_f32("c.half", FileDType::F16, vec![24], &vals).unwrap(),
            TensorToWrite { name: "ids".into(), dtype: FileDType::I64, shape: vec![3], data: Cow::Owned(ints) },
            TensorToWrite { name: "empty".into(), dtype: FileDType::F32, shape: vec![0, 5], data: Cow::Owned(vec![]) },
            TensorToWrite { name: "scalar".into(), dtype: FileDType::U8, shape: vec![], data: Cow::Owned(vec![7]) },
        ]
    }

    fn meta() -> HashMap<String, String> {
        [("format", "pt"), ("zz", "last"), ("a\"quote", "x\ny")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn write_read_is_bit_identical() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        let tensors = sample();
        write_safetensors(&path, &tensors, Some(&meta())).unwrap();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file is left");
        let ck = SafetensorsReader::open(&path).unwrap();
        assert_eq!(ck.names(), vec!["a.weight", "b.weight", "c.half", "empty", "ids", "scalar"]);
        for t in &tensors {
            assert_eq!(ck.bytes(&t.name).unwrap(), &t.data[..], "{}", t.name);
            let info = ck.info(&t.name).unwrap();
            assert_eq!((info.dtype, &info.shape, info.file), (t.dtype, &t.shape, 0));
        }
        assert_eq!(ck.metadata(), Some(&meta()));
        assert_eq!(ck.read_i64("ids").unwrap(), vec![-3, 0, 1 << 40]);
        assert!(ck.read_f32("ids").is_err());
        assert!(ck.read_i64("a.weight").is_err());
        let f = ck.read_f32("a.weight").unwrap();
        assert_eq!(f[1], (1.0 - 7.3) * 0.37);
        let bf = ck.read_f32("b.weight").unwrap();
        assert_eq!(bf[1], half::bf16::from_f32((1.0 - 7.3) * 0.37).to_f32());
        let total: usize = tensors.iter().map(|t| t.data.len()).sum();
        assert_eq!(ck.total_bytes(), total as u64);
        // header is 8-byte aligned and the file is exactly header + data
        let raw = fs::read(&path).unwrap();
        let n = u64::from_le_bytes(raw[..8].try_into().unwrap()) as usize;
        assert_eq!(n % 8, 0);
        assert_eq!(raw.len(), 8 + n + total);
        assert!(matches!(
            ck.bytes("nope"),
            Err(ModelError::MissingTensor { tensor, .. }) if tensor == "nope"
        ));
    }

    #[test]
    fn rewriting_a_read_checkpoint_is_byte_identical() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.safetensors");
        let b = dir.path().join("b.safetensors");
        write_safetensors(&a, &sample(), Some(&meta())).unwrap();
        let ck = SafetensorsReader::open(&a).unwrap();
        let again: Vec<TensorToWrite> = ck
            .names()
            .into_iter()
            .map(|n| {
                let info = ck.info(n).unwrap();
                TensorToWrite {
                    name: n.to_string(),
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    data: Cow::Borrowed(ck.bytes(n).unwrap()),
                }
            })
            .collect();
        write_safetensors(&b, &again, ck.metadata()).unwrap();
        assert_eq!(fs::read(&a).unwrap(), fs::read(&b).unwrap());
    }

    #[test]
    fn reference_crate_reads_our_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        let tensors = sample();
        write_safetensors(&path, &tensors, Some(&meta())).unwrap();
        let raw = fs::read(&path).unwrap();
        let st = safetensors::SafeTensors::deserialize(&raw).unwrap();
        assert_eq!(st.len(), tensors.len());
        for t in &tensors {
            let v = st.tensor(&t.name).unwrap();
            assert_eq!(v.data(), &t.data[..]);
            assert_eq!(v.shape(), &t.shape[..]);
            assert_eq!(format!("{:?}", v.dtype()), t.dtype.name());
        }
        let (_, md) = safetensors::SafeTensors::read_metadata(&raw).unwrap();
        assert_eq!(md.metadata().as_ref(), Some(&meta()));
        // and we read the reference crate's files (dtype-then-name order) to the same tensors
        let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
            .iter()
            .map(|t| {
                let dt = match t.dtype {
                    FileDType::F32 => safetensors::Dtype::F32,
                    FileDType::F16 => safetensors::Dtype::F16,
                    FileDType::BF16 => safetensors::Dtype::BF16,
                    FileDType::I64 => safetensors::Dtype::I64,
                    FileDType::I32 => safetensors::Dtype::I32,
                    FileDType::U32 => safetensors::Dtype::U32,
                    FileDType::U8 => safetensors::Dtype::U8,
                    FileDType::BOOL => safetensors::Dtype::BOOL,
                };
                let v = safetensors::tensor::TensorView::new(dt, t.shape.clone(), &t.data).unwrap();
                (t.name.clone(), v)
            })
            .collect();
        let ref_path = dir.path().join("ref.safetensors");
        safetensors::serialize_to_file(views, &Some(meta()), &ref_path).unwrap();
        let ck = SafetensorsReader::open(&ref_path).unwrap();
        for t in &tensors {
            assert_eq!(ck.bytes(&t.name).unwrap(), &t.data[..]);
            assert_eq!(ck.info(&t.name).unwrap().shape, t.shape);
        }
        assert_eq!(ck.metadata(), Some(&meta()));
    }

    #[test]
    fn sharded_write_and_read() {
        let dir = tempfile::tempdir().unwrap();
        let tensors = sample();
        // a.weight 96 B, b.weight 48, c.half 48, empty 0, ids 24, scalar 1 -> limit 100 gives 3 shards
        let files = write_checkpoint_dir(dir.path(), &tensors, Some(&meta()), Some(100)).unwrap();
        let names: Vec<String> = files.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(
            names,
            vec![
                "model-00001-of-00003.safetensors",
                "model-00002-of-00003.safetensors",
                "model-00003-of-00003.safetensors",
                "model.safetensors.index.json",
            ]
        );
        let index: serde_json::Value = serde_json::from_str(&fs::read_to_string(&files[3]).unwrap()).unwrap();
        assert_eq!(index["metadata"]["total_size"], 217);
        assert_eq!(index["weight_map"]["a.weight"], "model-00001-of-00003.safetensors");
        assert_eq!(index["weight_map"]["b.weight"], "model-00002-of-00003.safetensors");
        assert_eq!(index["weight_map"]["c.half"], "model-00002-of-00003.safetensors");
        assert_eq!(index["weight_map"]["ids"], "model-00003-of-00003.safetensors");
        let ck = SafetensorsReader::open(dir.path()).unwrap();
        assert_eq!(ck.files(), &files[..3]);
        assert_eq!(ck.len(), tensors.len());
        assert_eq!(ck.total_bytes(), 217);
        assert_eq!(ck.metadata(), Some(&meta()));
        for t in &tensors {
            assert_eq!(ck.bytes(&t.name).unwrap(), &t.data[..]);
        }
        assert_eq!(ck.path_of("ids"), Some(files[2].as_path()));
        assert_eq!(ck.info("b.weight").unwrap().file, 1);
        // the index file itself can be opened too
        assert_eq!(SafetensorsReader::open(&files[3]).unwrap().len(), tensors.len());

        // re-writing as one file removes the shards and the index
        let files = write_checkpoint_dir(dir.path(), &tensors, None, None).unwrap();
        assert_eq!(files, vec![dir.path().join("model.safetensors")]);
        let left: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1);
        let ck = SafetensorsReader::open(dir.path()).unwrap();
        assert_eq!(ck.files(), &files[..]);
        assert_eq!(ck.metadata(), None);
    }

    #[test]
    fn invalid_writes_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.safetensors");
        let mut t = sample();
        t[0].shape = vec![5, 6];
        let e = write_safetensors(&path, &t, None).unwrap_err();
        assert!(matches!(&e, ModelError::Tensor { tensor, .. } if tensor == "b.weight"), "{e}");
        let mut t = sample();
        t[1].name = "b.weight".into();
        let e = write_safetensors(&path, &t, None).unwrap_err();
        assert!(e.to_string().contains("given twice"), "{e}");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
        // a failing write (target is a directory) removes its temp file and keeps the target
        fs::create_dir(&path).unwrap();
        let e = write_safetensors(&path, &sample(), None).unwrap_err();
        assert!(matches!(e, ModelError::Io { .. }), "{e}");
        assert!(path.is_dir());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "only the blocking directory is left");
        // the checkpoint directory must exist
        let e = write_checkpoint_dir(&dir.path().join("nope"), &sample(), None, None).unwrap_err();
        assert!(matches!(e, ModelError::Io { .. }), "{e}");
    }

    #[test]
    fn shard_names() {
        assert!(is_shard_name("model-00001-of-00002.safetensors"));
        assert!(!is_shard_name("model-0000a-of-00002.safetensors"));
        assert!(!is_shard_name("model.safetensors"));
        assert!(!is_shard_name("model--of-1.safetensors"));
    }

    #[test]
    fn checkpoint_is_send_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<SafetensorsReader>();
    }
}
