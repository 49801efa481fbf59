//! The key/value cache of one sequence: per decoder layer, the rotated keys and the values of
//! every token seen so far, `[len, KV*Dh]` each.

/// Keys and values of one layer, `[len, KV*Dh]` each (keys after k_norm and RoPE).
#[derive(Clone, Debug, Default)]
struct LayerKv {
    k: Vec<f32>,
    v: Vec<f32>,
}

/// The cache of one sequence. Tokens are appended layer by layer during a forward step and
/// counted by [`KvCache::commit`] once every layer has its rows.
#[derive(Clone, Debug)]
pub struct KvCache {
    layers: Vec<LayerKv>,
    /// KV*Dh: one token's keys (or values) in one layer.
    width: usize,
    /// Tokens committed (the position of the next token).
    len: usize,
}

impl KvCache {
    /// An empty cache for `layers` layers of `width` = KV*Dh.
    pub fn new(layers: usize, width: usize) -> Self {
        KvCache { layers: vec![LayerKv::default(); layers], width, len: 0 }
    }

    /// Tokens cached: the position of the next token.
    pub fn len(&self) -> usize {
        self.len
    }

    /// No token cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `k`, `v` (`[n, KV*Dh]` each) to `layer`. Panics on a width mismatch or a layer
    /// that already holds uncommitted rows of a different count (programming errors).
    pub fn append(&mut self, layer: usize, k: &[f32], v: &[f32]) {
        assert!(k.len() == v.len() && k.len().is_multiple_of(self.width), "kv cache: k/v are not [n, KV*Dh]");
        let l = &mut self.layers[layer];
        l.k.extend_from_slice(k);
        l.v.extend_from_slice(v);
    }

    /// Keys `[len', KV*Dh]` of `layer`, including rows appended in the current step.
    pub fn keys(&self, layer: usize) -> &[f32] {
        &self.layers[layer].k
    }

    /// Values `[len', KV*Dh]` of `layer`, including rows appended in the current step.
    pub fn values(&self, layer: usize) -> &[f32] {
        &self.layers[layer].v
    }

    /// Counts the `n` tokens every layer received in this step.
    pub fn commit(&mut self, n: usize) {
        self.len += n;
        debug_assert!(self.layers.iter().all(|l| l.k.len() == self.len * self.width));
    }

    /// Bytes held (keys and values of every layer).
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(|l| (l.k.len() + l.v.len()) * 4).sum()
    }
}
