//! The KV cache of one sequence, holding only MLA's latent: per token and layer, the normalised
//! `c_kv` (kv_lora_rank values) and the roped `k_pe` (qk_rope_head_dim values), in pages.
//!
//! Invariants:
//! - page `i` holds positions `i * page_tokens .. (i + 1) * page_tokens`; `pages.len()` is
//!   `ceil(len / page_tokens)` except while a step has reserved room ahead;
//! - rows `0..len` hold the latents of positions `0..len`; rows past `len` are garbage;
//! - pages may be shared with other sequences or a prefix tree; a shared page is never written:
//!   `reserve` copies the partly filled tail page if it is shared (copy on write), and every page
//!   a step writes is private;
//! - nothing else is stored: the cache costs `kv_bytes_per_token` per token of its pages.

use std::sync::Arc;

use candle_core::{Device, Tensor};

use crate::device_latents::DeviceLatents;
use crate::error::Result;
use crate::page_pool::{Page, PageLayout, PagePool};

pub struct LatentCache {
    pool: Arc<PagePool>,
    pages: Vec<Arc<Page>>,
    len: usize,
    /// The rows mirrored on a GPU, when the model runs on one (empty otherwise).
    device: DeviceLatents,
}

impl LatentCache {
    /// An empty cache drawing pages from `pool`.
    pub fn new(pool: Arc<PagePool>) -> Self {
        Self {
            pool,
            pages: Vec::new(),
            len: 0,
            device: DeviceLatents::default(),
        }
    }

    /// A cache whose first `len` positions are these (possibly shared) pages.
    pub(crate) fn from_pages(pool: Arc<PagePool>, pages: Vec<Arc<Page>>, len: usize) -> Self {
        debug_assert_eq!(pages.len(), len.div_ceil(pool.layout().page_tokens));
        Self {
            pool,
            pages,
            len,
            device: DeviceLatents::default(),
        }
    }

    pub fn layout(&self) -> &PageLayout {
        self.pool.layout()
    }

    /// Tokens cached so far (the position the next token will take).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn pages(&self) -> &[Arc<Page>] {
        &self.pages
    }

    /// Forgets every token from position `len` on (dropping its whole pages).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
        self.pages
            .truncate(self.len.div_ceil(self.layout().page_tokens));
        self.device.forget_from(self.len);
    }

    /// Bytes per cached token: (kv_lora_rank + qk_rope_head_dim) x layers x 4.
    pub fn bytes_per_token(&self) -> usize {
        self.layout().bytes_per_token()
    }

    /// Bytes holding live tokens.
    pub fn used_bytes(&self) -> usize {
        self.len * self.bytes_per_token()
    }

    /// Bytes of the pages this cache references, counted from the buffers themselves.
    pub fn allocated_bytes(&self) -> usize {
        self.pages
            .iter()
            .map(|p| std::mem::size_of_val(p.data()))
            .sum()
    }

    /// Pages that `reserve(additional)` would take from the pool.
    pub fn pages_needed(&self, additional: usize) -> usize {
        let page_tokens = self.layout().page_tokens;
        let fresh = (self.len + additional)
            .div_ceil(page_tokens)
            .saturating_sub(self.pages.len());
        let copy = usize::from(self.tail_is_shared_and_partial());
        fresh + copy
    }

    fn tail_is_shared_and_partial(&self) -> bool {
        !self.len.is_multiple_of(self.layout().page_tokens)
            && self
                .pages
                .last()
                .is_some_and(|tail| Arc::strong_count(tail) > 1)
    }

    /// Makes every page that positions `len..len + additional` fall in present and private.
    pub(crate) fn reserve(&mut self, additional: usize) -> Result<()> {
        if self.tail_is_shared_and_partial() {
            let tail = self.pages.last_mut().expect("partial tail exists");
            *tail = Arc::new(tail.duplicate()?);
        }
        let needed = (self.len + additional).div_ceil(self.layout().page_tokens);
        while self.pages.len() < needed {
            self.pages.push(Arc::new(self.pool.allocate()?));
        }
        Ok(())
    }

    /// Writes one layer's rows (`[c_kv | k_pe]` per token) for positions `start..`, after `reserve`.
    pub(crate) fn write(&mut self, layer: usize, start: usize, rows: &[f32]) {
        let layout = *self.layout();
        let row = layout.row();
        self.device.forget_layer_from(layer, start);
        for (i, values) in rows.chunks_exact(row).enumerate() {
            let position = start + i;
            let page = Arc::get_mut(&mut self.pages[position / layout.page_tokens])
                .expect("reserve made every written page private");
            let offset = layout.layer_offset(layer) + (position % layout.page_tokens) * row;
            page.data_mut()[offset..offset + row].copy_from_slice(values);
        }
    }

    /// One layer of every page: the page table the attention kernel reads.
    pub(crate) fn layer_pages(&self, layer: usize) -> Vec<&[f32]> {
        self.pages.iter().map(|p| p.layer(layer)).collect()
    }

    /// One layer's rows on `device` (a GPU), `[pages x page_tokens, kv_lora + rope]`: its first
    /// `visible` rows are positions `0..visible` (written, if not yet committed), the rest of the
    /// last page is garbage. Only rows written since the last call are copied to the device.
    pub(crate) fn device_rows(
        &mut self,
        layer: usize,
        visible: usize,
        device: &Device,
    ) -> Result<Tensor> {
        let layout = *self.layout();
        let room = self.pages.len() * layout.page_tokens;
        assert!(visible <= room, "rows past the reserved pages");
        let pages = &self.pages;
        self.device
            .rows(layer, visible, room, layout.row(), device, |from, to| {
                let mut values = Vec::with_capacity((to - from) * layout.row());
                for position in from..to {
                    values.extend_from_slice(row_of(pages, &layout, layer, position));
                }
                values
            })
    }

    /// One layer's first `len` rows copied out contiguously: ([len x kv_lora], [len x rope]).
    pub(crate) fn gather(&self, layer: usize, len: usize) -> (Vec<f32>, Vec<f32>) {
        let layout = *self.layout();
        let kv_lora = layout.kv_lora;
        let mut c_kv = Vec::with_capacity(len * kv_lora);
        let mut k_pe = Vec::with_capacity(len * layout.rope);
        for position in 0..len {
            let values = row_of(&self.pages, &layout, layer, position);
            c_kv.extend_from_slice(&values[..kv_lora]);
            k_pe.extend_from_slice(&values[kv_lora..]);
        }
        (c_kv, k_pe)
    }

    /// Commits tokens written by a completed step.
    pub(crate) fn set_len(&mut self, len: usize) {
        debug_assert!(len <= self.pages.len() * self.layout().page_tokens);
        self.len = len;
    }

    /// Hands the pages over (to the prefix tree).
    pub(crate) fn into_pages(self) -> Vec<Arc<Page>> {
        self.pages
    }
}

/// `[c_kv | k_pe]` of `position` in `layer`, inside its page.
fn row_of<'a>(
    pages: &'a [Arc<Page>],
    layout: &PageLayout,
    layer: usize,
    position: usize,
) -> &'a [f32] {
    let page = pages[position / layout.page_tokens].layer(layer);
    &page[(position % layout.page_tokens) * layout.row()..][..layout.row()]
}
