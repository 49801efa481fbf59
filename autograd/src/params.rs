//! A model's parameters as one named table over a single flat allocation.
//!
//! Each entry is a view (offset, shape) into the flat buffer, so a contiguous group of
//! parameters (an expert, a layer) is a range, and the optimiser state is one vector each.

use crate::error::{AutogradError, Result};
use crate::tape::{Gradients, Tape};
use crate::tensor::{DType, Storage, Tensor};
use std::collections::HashMap;
use std::sync::Arc;

/// One named parameter: where it lives in the flat buffer.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamEntry {
    /// Name (HF naming for models loaded from HF).
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// First element in the flat buffer.
    pub offset: usize,
}

impl ParamEntry {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Named parameters over one flat storage.
#[derive(Clone, Debug)]
pub struct ParamTable {
    entries: Vec<ParamEntry>,
    index: HashMap<String, usize>,
    storage: Arc<Storage>,
}

impl ParamTable {
    /// Lays out `specs` (name, shape) in order and fills the flat buffer with `init(name, n)`.
    /// Panics on duplicate names (a programming error).
    pub fn new(specs: &[(String, Vec<usize>)], dtype: DType, mut init: impl FnMut(&str, usize) -> Vec<f32>) -> Self {
        let mut entries = Vec::with_capacity(specs.len());
        let mut index = HashMap::new();
        let mut data = Vec::new();
        for (name, shape) in specs {
            let numel: usize = shape.iter().product();
            let values = init(name, numel);
            assert_eq!(values.len(), numel, "init of {name}");
            assert!(index.insert(name.clone(), entries.len()).is_none(), "duplicate parameter {name}");
            entries.push(ParamEntry { name: name.clone(), shape: shape.clone(), offset: data.len() });
            data.extend_from_slice(&values);
        }
        ParamTable { entries, index, storage: Arc::new(Storage::from_f32(data, dtype)) }
    }

    /// Entries in layout order.
    pub fn entries(&self) -> &[ParamEntry] {
        &self.entries
    }

    /// Total number of elements.
    pub fn numel(&self) -> usize {
        self.storage.len()
    }

    /// Storage element type.
    pub fn dtype(&self) -> DType {
        self.storage.dtype()
    }

    /// The entry called `name`.
    pub fn entry(&self, name: &str) -> Result<&ParamEntry> {
        self.index.get(name).map(|&i| &self.entries[i]).ok_or_else(|| AutogradError::UnknownParam(name.into()))
    }

    /// A view of the parameter called `name`.
    pub fn get(&self, name: &str) -> Result<Tensor> {
        let e = self.entry(name)?;
        Ok(Tensor::view(self.storage.clone(), e.offset, &e.shape))
    }

    /// One leaf spanning the consecutive parameters `names` (same column count) as a single
    /// `[sum of rows, cols]` matrix: fused projections (q/k/v, gate/up) in one GEMM.
    /// Returns the leaf and its offset for [`ParamTable::flat_grads_at`].
    pub fn fused_leaf(&self, tape: &Tape, names: &[&str]) -> Result<(usize, Tensor)> {
        let cols = *self.entry(names[0])?.shape.last().unwrap_or(&1);
        let mut rows = 0;
        for name in names {
            let e = self.entry(name)?;
            if e.shape.len() != 2 || e.shape[1] != cols {
                return Err(AutogradError::Shape {
                    op: "fused_leaf",
                    msg: format!("`{name}` {:?} does not have {cols} columns", e.shape),
                });
            }
            rows += e.shape[0];
        }
        self.block_leaf(tape, names, &[rows, cols])
    }

    /// One leaf of `shape` over the consecutive parameters `names` (their elements in layout
    /// order), e.g. all routed experts of a layer as `[E, 3*W*D]`.
    pub fn block_leaf(&self, tape: &Tape, names: &[&str], shape: &[usize]) -> Result<(usize, Tensor)> {
        let first = self.entry(names[0])?;
        let mut end = first.offset;
        for name in names {
            let e = self.entry(name)?;
            if e.offset != end {
                return Err(AutogradError::Shape {
                    op: "block_leaf",
                    msg: format!("`{name}` does not continue the block of `{}`", names[0]),
                });
            }
            end += e.numel();
        }
        if end - first.offset != shape.iter().product::<usize>() {
            return Err(AutogradError::Shape {
                op: "block_leaf",
                msg: format!("block of {} elements is not {shape:?}", end - first.offset),
            });
        }
        Ok((first.offset, tape.leaf(&Tensor::view(self.storage.clone(), first.offset, shape))))
    }

    /// One leaf for the parameter `name`, with its offset.
    pub fn leaf(&self, tape: &Tape, name: &str) -> Result<(usize, Tensor)> {
        let e = self.entry(name)?;
        Ok((e.offset, tape.leaf(&Tensor::view(self.storage.clone(), e.offset, &e.shape))))
    }

    /// Gathers the gradients of `(offset, leaf)` pairs into one flat vector in layout order;
    /// elements no leaf covers, or whose leaf got no gradient, are zero.
    pub fn flat_grads_at(&self, leaves: &[(usize, Tensor)], grads: &mut Gradients) -> Vec<f32> {
        let taken: Vec<(usize, Vec<f32>)> =
            leaves.iter().filter_map(|(offset, leaf)| grads.remove(leaf).map(|g| (*offset, g))).collect();
        let parts: Vec<(usize, &[f32])> = taken.iter().map(|(offset, g)| (*offset, g.as_slice())).collect();
        kernels_cpu::buffer::assemble(self.numel(), &parts)
    }

    /// The flat f32 values (a copy for half storage).
    pub fn flat(&self) -> std::borrow::Cow<'_, [f32]> {
        self.storage.f32_range(0..self.storage.len())
    }

    /// Mutable flat f32 values for the optimiser. Copies the storage if a tape still holds it,
    /// so drop tapes first. `None` for half storage (frozen weights).
    pub fn flat_mut(&mut self) -> Option<&mut [f32]> {
        match Arc::make_mut(&mut self.storage) {
            Storage::F32(v) => Some(v.as_mut_slice()),
            _ => None,
        }
    }

    /// Overwrites the parameter `name` with `values` (converted to the storage type).
    pub fn set(&mut self, name: &str, values: &[f32]) -> Result<()> {
        let e = self.entry(name)?.clone();
        if values.len() != e.numel() {
            return Err(AutogradError::Shape {
                op: "ParamTable::set",
                msg: format!("`{name}` has {} elements, got {}", e.numel(), values.len()),
            });
        }
        let range = e.offset..e.offset + e.numel();
        match Arc::make_mut(&mut self.storage) {
            Storage::F32(v) => v[range].copy_from_slice(values),
            Storage::BF16(v) => {
                for (d, &s) in v[range].iter_mut().zip(values) {
                    *d = half::bf16::from_f32(s);
                }
            }
            Storage::F16(v) => {
                for (d, &s) in v[range].iter_mut().zip(values) {
                    *d = half::f16::from_f32(s);
                }
            }
        }
        Ok(())
    }
}
