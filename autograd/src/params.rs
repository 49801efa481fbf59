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
    pub fn new(
        specs: &[(String, Vec<usize>)],
        dtype: DType,
        mut init: impl FnMut(&str, usize) -> Vec<f32>,
    ) -> Self {
        let mut entries = Vec::with_capacity(specs.len());
        let mut index = HashMap::new();
        let mut data = Vec::new();
        for (name, shape) in specs {
            let numel: usize = shape.iter().product();
            let values = init(name, numel);
            assert_eq!(values.len(), numel, "init of {name}");
            assert!(
                index.insert(name.clone(), entries.len()).is_none(),
                "duplicate parameter {name}"
            );
            entries.push(ParamEntry {
                name: name.clone(),
                shape: shape.clone(),
                offset: data.len(),
            });
            data.extend_from_slice(&values);
        }
        ParamTable {
            entries,
            index,
            storage: Arc::new(Storage::from_f32(data, dtype)),
        }
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
        self.index
            .get(name)
            .map(|&i| &self.entries[i])
            .ok_or_else(|| AutogradError::UnknownParam(name.into()))
    }

    /// A view of the parameter called `name`.
    pub fn get(&self, name: &str) -> Result<Tensor> {
        let e = self.entry(name)?;
        Ok(Tensor::view(self.storage.clone(), e.offset, &e.shape))
    }

    /// Views of every parameter, registered as leaves on `tape` (in layout order).
    pub fn leaves(&self, tape: &Tape) -> Vec<Tensor> {
        self.entries
            .iter()
            .map(|e| tape.leaf(&Tensor::view(self.storage.clone(), e.offset, &e.shape)))
            .collect()
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

    /// Gathers the gradients of `leaves` (from [`ParamTable::leaves`]) into one flat vector in
    /// layout order; parameters that got no gradient contribute zeros.
    pub fn flat_grads(&self, leaves: &[Tensor], grads: &mut Gradients) -> Vec<f32> {
        let mut flat = vec![0f32; self.numel()];
        for (e, leaf) in self.entries.iter().zip(leaves) {
            if let Some(g) = grads.remove(leaf) {
                flat[e.offset..e.offset + e.numel()].copy_from_slice(&g);
            }
        }
        flat
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
