//! The KV cache of one sequence, holding only MLA's latent: per token and layer, the normalised
//! `c_kv` (kv_lora_rank values) and the roped `k_pe` (qk_rope_head_dim values).
//!
//! Invariants:
//! - rows `0..len` of every layer's buffers hold the latents of positions `0..len`;
//! - every layer has the same length and capacity; rows past `len` are garbage;
//! - nothing else is stored: the cache costs exactly `kv_bytes_per_token` per token of capacity.

use candle_core::{DType, Device, Tensor};

use crate::config::ModelConfig;
use crate::error::Result;

pub struct LatentCache {
    /// Empty until the first token arrives, then one entry per layer.
    layers: Vec<LayerLatents>,
    num_layers: usize,
    len: usize,
    capacity: usize,
    kv_lora_rank: usize,
    rope_dim: usize,
    dtype: DType,
    device: Device,
}

struct LayerLatents {
    /// [capacity, kv_lora_rank]
    c_kv: Tensor,
    /// [capacity, qk_rope_head_dim]
    k_pe: Tensor,
}

impl LatentCache {
    /// An empty cache for `config`; memory is taken as tokens arrive.
    pub fn new(config: &ModelConfig, dtype: DType, device: &Device) -> Self {
        Self {
            layers: Vec::new(),
            num_layers: config.num_hidden_layers,
            len: 0,
            capacity: 0,
            kv_lora_rank: config.kv_lora_rank,
            rope_dim: config.qk_rope_head_dim,
            dtype,
            device: device.clone(),
        }
    }

    /// Tokens cached so far (the position the next token will take).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets every token from position `len` on.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Bytes per cached token: (kv_lora_rank + qk_rope_head_dim) x layers x element size.
    pub fn bytes_per_token(&self) -> usize {
        (self.kv_lora_rank + self.rope_dim) * self.num_layers * self.dtype.size_in_bytes()
    }

    /// Bytes holding live tokens.
    pub fn used_bytes(&self) -> usize {
        self.len * self.bytes_per_token()
    }

    /// Bytes actually allocated, counted from the tensors themselves.
    pub fn allocated_bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|l| (l.c_kv.elem_count() + l.k_pe.elem_count()) * self.dtype.size_in_bytes())
            .sum()
    }

    /// Makes room for `additional` tokens past `len`, doubling capacity at least, so a
    /// token-by-token decode copies the cache O(log n) times.
    pub(crate) fn reserve(&mut self, additional: usize) -> Result<()> {
        let needed = self.len + additional;
        if needed <= self.capacity {
            return Ok(());
        }
        let capacity = needed.max(self.capacity * 2);
        let mut grown = Vec::with_capacity(self.num_layers);
        for index in 0..self.num_layers {
            let c_kv = Tensor::zeros((capacity, self.kv_lora_rank), self.dtype, &self.device)?;
            let k_pe = Tensor::zeros((capacity, self.rope_dim), self.dtype, &self.device)?;
            if self.len > 0 {
                let (old_c_kv, old_k_pe) = self.view(index, self.len)?;
                c_kv.slice_set(&old_c_kv.contiguous()?, 0, 0)?;
                k_pe.slice_set(&old_k_pe.contiguous()?, 0, 0)?;
            }
            grown.push(LayerLatents { c_kv, k_pe });
        }
        self.layers = grown;
        self.capacity = capacity;
        Ok(())
    }

    /// Writes one layer's latents for positions `start..start + rows` (after `reserve`).
    pub(crate) fn write(
        &self,
        layer: usize,
        start: usize,
        c_kv: &Tensor,
        k_pe: &Tensor,
    ) -> Result<()> {
        let buffers = &self.layers[layer];
        buffers.c_kv.slice_set(&c_kv.contiguous()?, 0, start)?;
        buffers.k_pe.slice_set(&k_pe.contiguous()?, 0, start)?;
        Ok(())
    }

    /// Views of one layer's first `len` latents: ([len, kv_lora_rank], [len, rope_dim]).
    pub(crate) fn view(&self, layer: usize, len: usize) -> Result<(Tensor, Tensor)> {
        let buffers = &self.layers[layer];
        Ok((
            buffers.c_kv.narrow(0, 0, len)?,
            buffers.k_pe.narrow(0, 0, len)?,
        ))
    }

    /// Commits tokens written by a completed forward pass.
    pub(crate) fn set_len(&mut self, len: usize) {
        debug_assert!(len <= self.capacity);
        self.len = len;
    }
}
