//! Streaming writing of (optionally sharded) HF checkpoint directories: every header is computed up front from
//! the tensors' names, dtypes and shapes, then each tensor's bytes are produced on demand by a callback and
//! written sequentially, so only one tensor (or whatever the callback keeps) is in memory at a time.
//!
//! Header keys are in name order, like [`super::write_checkpoint_dir`]; the data section is laid out in the order
//! the tensors are given (the order the producer can make them in, e.g. layer by layer), which the format allows
//! (a reader locates every tensor by its `data_offsets`). Shards are cut in that order too, as HF's
//! `save_pretrained` cuts a state dict. Each file is written atomically ([`atomicio::write_file_with`]).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{byte_len, FileDType, INDEX_FILE_NAME, SINGLE_FILE_NAME};
use crate::error::{ModelError, Result};

/// HF `save_pretrained`'s default shard size ("5GB").
pub const DEFAULT_MAX_SHARD_BYTES: u64 = 5_000_000_000;

/// What the header says about one tensor whose bytes come later.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    /// Tensor name (unique, not `__metadata__`).
    pub name: String,
    /// Element type.
    pub dtype: FileDType,
    /// Shape.
    pub shape: Vec<usize>,
}

/// Writes a checkpoint into the existing, empty directory `dir` (HF layout): one `model.safetensors` when the
/// total byte size is at most `max_shard_bytes` (or it is `None`), else `model-0000i-of-0000N.safetensors` shards
/// (a new shard starts when the next tensor would exceed the limit) plus `model.safetensors.index.json`.
///
/// `produce(i)` returns the little-endian bytes of `tensors[i]`; it is called once per tensor, for `i` in
/// increasing order, and its result must be exactly `numel * dtype.size()` bytes long. `progress(done, total)`
/// is told the bytes written so far after each tensor. Returns the written files. On error the file being
/// written is removed (the caller makes the directory itself atomic, e.g. with [`atomicio::write_dir`]).
pub fn write_checkpoint_streaming<'a>(
    dir: &Path,
    tensors: &[TensorSpec],
    metadata: Option<&HashMap<String, String>>,
    max_shard_bytes: Option<u64>,
    mut produce: impl FnMut(usize) -> Result<Cow<'a, [u8]>>,
    mut progress: impl FnMut(u64, u64),
) -> Result<Vec<PathBuf>> {
    let sizes = check_specs(dir, tensors)?;
    let total: u64 = sizes.iter().sum();
    // Shards as index ranges into `tensors`.
    let mut shards: Vec<std::ops::Range<usize>> = Vec::new();
    match max_shard_bytes {
        Some(max) if total > max => {
            let (mut start, mut cur) = (0usize, 0u64);
            for (i, &n) in sizes.iter().enumerate() {
                if i > start && cur + n > max {
                    shards.push(start..i);
                    start = i;
                    cur = 0;
                }
                cur += n;
            }
            shards.push(start..tensors.len());
        }
        _ => shards.push(0..tensors.len()),
    }
    let count = shards.len();
    let mut paths = Vec::with_capacity(count + 1);
    let mut weight_map: BTreeMap<&str, String> = BTreeMap::new();
    let mut done = 0u64;
    for (k, range) in shards.iter().enumerate() {
        let name = if count == 1 {
            SINGLE_FILE_NAME.to_string()
        } else {
            format!("model-{:05}-of-{count:05}.safetensors", k + 1)
        };
        let path = dir.join(&name);
        let header = header_bytes(&tensors[range.clone()], &sizes[range.clone()], metadata);
        atomicio::write_file_with(&path, |w| {
            w.write_all(&(header.len() as u64).to_le_bytes()).map_err(|e| ModelError::io(&path, e))?;
            w.write_all(&header).map_err(|e| ModelError::io(&path, e))?;
            for i in range.clone() {
                let bytes = produce(i)?;
                if bytes.len() as u64 != sizes[i] {
                    return Err(ModelError::Tensor {
                        path: path.clone(),
                        tensor: tensors[i].name.clone(),
                        msg: format!(
                            "dtype {} with shape {:?} needs {} bytes but {} were produced",
                            tensors[i].dtype,
                            tensors[i].shape,
                            sizes[i],
                            bytes.len()
                        ),
                    });
                }
                w.write_all(&bytes).map_err(|e| ModelError::io(&path, e))?;
                done += sizes[i];
                progress(done, total);
            }
            Ok(())
        })?;
        for t in &tensors[range.clone()] {
            weight_map.insert(&t.name, name.clone());
        }
        paths.push(path);
    }
    if count > 1 {
        let index = serde_json::json!({ "metadata": {"total_size": total}, "weight_map": weight_map });
        let index_path = dir.join(INDEX_FILE_NAME);
        let mut text = serde_json::to_string_pretty(&index)
            .map_err(|e| ModelError::Safetensors { path: index_path.clone(), msg: format!("cannot serialise: {e}") })?;
        text.push('\n');
        atomicio::write_file(&index_path, text.as_bytes())?;
        paths.push(index_path);
    }
    Ok(paths)
}

/// Unique names, no `__metadata__`, sizes that fit: the byte size of each tensor.
fn check_specs(dir: &Path, tensors: &[TensorSpec]) -> Result<Vec<u64>> {
    let mut seen = HashSet::with_capacity(tensors.len());
    tensors
        .iter()
        .map(|t| {
            let err = |msg: String| ModelError::Tensor { path: dir.to_path_buf(), tensor: t.name.clone(), msg };
            if t.name == "__metadata__" {
                return Err(err("`__metadata__` is reserved and cannot name a tensor".into()));
            }
            if !seen.insert(t.name.as_str()) {
                return Err(err("given twice".into()));
            }
            byte_len(t.dtype, &t.shape)
                .map(|n| n as u64)
                .ok_or_else(|| err(format!("shape {:?} is too large (byte size overflows)", t.shape)))
        })
        .collect()
}

/// The padded header JSON: keys in name order, `data_offsets` following the given (data) order.
fn header_bytes(tensors: &[TensorSpec], sizes: &[u64], metadata: Option<&HashMap<String, String>>) -> Vec<u8> {
    fn quote(s: &str) -> String {
        // Serialising a str to JSON cannot fail.
        serde_json::to_string(s).unwrap_or_default()
    }
    let mut entries: Vec<(&str, String)> = Vec::with_capacity(tensors.len());
    let mut offset = 0u64;
    for (t, &n) in tensors.iter().zip(sizes) {
        let shape: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
        let end = offset + n;
        entries.push((
            &t.name,
            format!(
                "{}:{{\"dtype\":\"{}\",\"shape\":[{}],\"data_offsets\":[{offset},{end}]}}",
                quote(&t.name),
                t.dtype.name(),
                shape.join(",")
            ),
        ));
        offset = end;
    }
    entries.sort_by(|a, b| a.0.cmp(b.0));
    let mut parts = Vec::with_capacity(entries.len() + 1);
    if let Some(md) = metadata {
        let sorted: BTreeMap<&String, &String> = md.iter().collect();
        let kv: Vec<String> = sorted.into_iter().map(|(k, v)| format!("{}:{}", quote(k), quote(v))).collect();
        parts.push(format!("\"__metadata__\":{{{}}}", kv.join(",")));
    }
    parts.extend(entries.into_iter().map(|(_, e)| e));
    let mut bytes = format!("{{{}}}", parts.join(",")).into_bytes();
    let pad = (8 - bytes.len() % 8) % 8;
    bytes.resize(bytes.len() + pad, b' ');
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::safetensors_io::{write_checkpoint_dir, SafetensorsReader, TensorToWrite};
    use std::fs;

    fn specs() -> Vec<(TensorSpec, Vec<u8>)> {
        // Deliberately not in name order: data goes in the given order, header keys in name order.
        [
            ("b.weight", FileDType::F32, vec![2, 3]),
            ("a.weight", FileDType::BF16, vec![5]),
            ("c", FileDType::I32, vec![4, 1]),
        ]
        .into_iter()
        .enumerate()
        .map(|(k, (n, dtype, shape))| {
            let len = byte_len(dtype, &shape).unwrap();
            let bytes = (0..len).map(|i| (i * 7 + k * 31) as u8).collect();
            (TensorSpec { name: n.into(), dtype, shape }, bytes)
        })
        .collect()
    }

    #[test]
    fn single_and_sharded_outputs_read_back_exactly() {
        let t = specs();
        let only: Vec<TensorSpec> = t.iter().map(|(s, _)| s.clone()).collect();
        for max in [None, Some(30), Some(1)] {
            let dir = tempfile::tempdir().unwrap();
            let mut calls = Vec::new();
            let files = write_checkpoint_streaming(
                dir.path(),
                &only,
                None,
                max,
                |i| {
                    calls.push(i);
                    Ok(Cow::Borrowed(&t[i].1[..]))
                },
                |_, _| {},
            )
            .unwrap();
            assert_eq!(calls, vec![0, 1, 2]);
            assert_eq!(
                files.len(),
                if max.is_none() {
                    1
                } else if max == Some(30) {
                    3
                } else {
                    4
                }
            );
            let ck = SafetensorsReader::open(dir.path()).unwrap();
            for (s, bytes) in &t {
                assert_eq!(ck.info(&s.name).unwrap().shape, s.shape);
                assert_eq!(ck.bytes(&s.name).unwrap(), &bytes[..], "{}", s.name);
            }
        }
    }

    #[test]
    fn single_file_header_matches_the_in_memory_writer_for_name_ordered_input() {
        let mut t = specs();
        t.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
        let a = tempfile::tempdir().unwrap();
        let only: Vec<TensorSpec> = t.iter().map(|(s, _)| s.clone()).collect();
        write_checkpoint_streaming(a.path(), &only, Some(&meta), None, |i| Ok(Cow::Borrowed(&t[i].1[..])), |_, _| {})
            .unwrap();
        let b = tempfile::tempdir().unwrap();
        let tw: Vec<TensorToWrite> = t
            .iter()
            .map(|(s, d)| TensorToWrite {
                name: s.name.clone(),
                dtype: s.dtype,
                shape: s.shape.clone(),
                data: Cow::Borrowed(d),
            })
            .collect();
        write_checkpoint_dir(b.path(), &tw, Some(&meta), None).unwrap();
        let read = |d: &Path| fs::read(d.join(SINGLE_FILE_NAME)).unwrap();
        assert_eq!(read(a.path()), read(b.path()));
    }

    #[test]
    fn a_failing_or_short_producer_leaves_no_file() {
        let t = specs();
        let only: Vec<TensorSpec> = t.iter().map(|(s, _)| s.clone()).collect();
        let dir = tempfile::tempdir().unwrap();
        let err = write_checkpoint_streaming(
            dir.path(),
            &only,
            None,
            None,
            |i| if i == 1 { Ok(Cow::Owned(vec![0u8; 3])) } else { Ok(Cow::Borrowed(&t[i].1[..])) },
            |_, _| {},
        )
        .unwrap_err();
        assert!(err.to_string().contains("were produced"), "{err}");
        let err = write_checkpoint_streaming(
            dir.path(),
            &only,
            None,
            None,
            |i| if i == 2 { Err(ModelError::Invalid("boom".into())) } else { Ok(Cow::Borrowed(&t[i].1[..])) },
            |_, _| {},
        )
        .unwrap_err();
        assert!(err.to_string().contains("boom"), "{err}");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0, "files left behind");
    }
}
