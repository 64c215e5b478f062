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
//! - nothing else is stored: the cache costs `kv_bytes_per_token` per token of its pages;
//! - during a step on a GPU, rows it wrote may be only on the device (`write_on_device`); the
//!   step ends with `commit_device_writes` (or `discard_device_writes`), so between steps the
//!   pages hold every row.

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
    /// Rows this step wrote on the device and not yet to the pages.
    owed: Vec<OwedRows>,
}

/// Rows written on the device that the pages do not hold yet.
struct OwedRows {
    layer: usize,
    start: usize,
    /// [t, row] f32 on the device.
    rows: Tensor,
}

impl LatentCache {
    /// An empty cache drawing pages from `pool`.
    pub fn new(pool: Arc<PagePool>) -> Self {
        Self {
            pool,
            pages: Vec::new(),
            len: 0,
            device: DeviceLatents::default(),
            owed: Vec::new(),
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
            owed: Vec::new(),
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
        self.owed.clear();
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
        self.device.forget_layer_from(layer, start);
        self.write_pages(layer, start, rows, &layout);
    }

    fn write_pages(&mut self, layer: usize, start: usize, rows: &[f32], layout: &PageLayout) {
        let row = layout.row();
        for (i, values) in rows.chunks_exact(row).enumerate() {
            let position = start + i;
            let page = Arc::get_mut(&mut self.pages[position / layout.page_tokens])
                .expect("reserve made every written page private");
            let offset = layout.layer_offset(layer) + (position % layout.page_tokens) * row;
            page.data_mut()[offset..offset + row].copy_from_slice(values);
        }
    }

    /// Writes one layer's rows (`[t, kv_lora + rope]` f32 on a GPU) for positions `start..`,
    /// after `reserve`, to the device only: the pages get them at [`Self::commit_device_writes`].
    pub(crate) fn write_on_device(
        &mut self,
        layer: usize,
        start: usize,
        rows: &Tensor,
    ) -> Result<()> {
        let layout = *self.layout();
        let room = self.pages.len() * layout.page_tokens;
        assert!(start + rows.dim(0)? <= room, "rows past the reserved pages");
        let pages = &self.pages;
        self.device.write(
            layer,
            start,
            rows,
            room,
            layout.row(),
            rows.device(),
            |from, to| rows_of(pages, &layout, layer, from..to),
        )?;
        self.owed.push(OwedRows {
            layer,
            start,
            rows: rows.clone(),
        });
        Ok(())
    }

    /// Copies the rows written on the device since the last commit to the pages, in one copy
    /// (one wait for the device per step, not one per layer).
    pub(crate) fn commit_device_writes(&mut self) -> Result<()> {
        if self.owed.is_empty() {
            return Ok(());
        }
        let tensors: Vec<&Tensor> = self.owed.iter().map(|owed| &owed.rows).collect();
        let values = Tensor::cat(&tensors, 0)?.flatten_all()?.to_vec1::<f32>()?;
        let layout = *self.layout();
        let mut offset = 0;
        for owed in std::mem::take(&mut self.owed) {
            let len = owed.rows.elem_count();
            self.write_pages(
                owed.layer,
                owed.start,
                &values[offset..offset + len],
                &layout,
            );
            offset += len;
        }
        Ok(())
    }

    /// Drops the rows written on the device since the last commit (a step that did not finish):
    /// the mirror forgets them, the pages never had them.
    pub(crate) fn discard_device_writes(&mut self) {
        for owed in std::mem::take(&mut self.owed) {
            self.device.forget_layer_from(owed.layer, owed.start);
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
                rows_of(pages, &layout, layer, from..to)
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

/// The rows of `positions` in `layer`, one after another.
fn rows_of(
    pages: &[Arc<Page>],
    layout: &PageLayout,
    layer: usize,
    positions: std::ops::Range<usize>,
) -> Vec<f32> {
    let mut values = Vec::with_capacity(positions.len() * layout.row());
    for position in positions {
        values.extend_from_slice(row_of(pages, layout, layer, position));
    }
    values
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cache() -> LatentCache {
        let layout = PageLayout {
            page_tokens: 4,
            layers: 2,
            kv_lora: 3,
            rope: 1,
        };
        LatentCache::new(PagePool::new(layout, None))
    }

    /// Rows of positions `positions` in `layer`, each [p, p, p, layer] plus `generation`.
    fn rows(layer: usize, positions: std::ops::Range<usize>, generation: f32) -> Vec<f32> {
        positions
            .flat_map(|p| {
                let v = p as f32 + generation;
                [v, v, v, layer as f32 + generation]
            })
            .collect()
    }

    fn tensor(values: Vec<f32>) -> Tensor {
        let len = values.len() / 4;
        Tensor::from_vec(values, (len, 4), &Device::Cpu).unwrap()
    }

    fn device_rows(cache: &mut LatentCache, layer: usize, visible: usize) -> Vec<f32> {
        let rows = cache.device_rows(layer, visible, &Device::Cpu).unwrap();
        rows.narrow(0, 0, visible)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    /// A GPU step's rows reach the device at once and the pages at the commit; a step that
    /// stops part way leaves the pages as they were and the mirror re-reads them.
    #[test]
    fn rows_written_on_the_device_reach_the_pages_at_the_commit() {
        let mut cache = cache();
        cache.reserve(6).unwrap();
        for layer in 0..2 {
            cache
                .write_on_device(layer, 0, &tensor(rows(layer, 0..6, 0.0)))
                .unwrap();
        }
        assert_eq!(device_rows(&mut cache, 1, 6), rows(1, 0..6, 0.0));
        // Not yet on the pages.
        assert_eq!(cache.gather(1, 6).1, vec![0.0; 6]);
        cache.commit_device_writes().unwrap();
        cache.set_len(6);
        for layer in 0..2 {
            let (c_kv, k_pe) = cache.gather(layer, 6);
            let want = rows(layer, 0..6, 0.0);
            assert_eq!(
                k_pe,
                want.iter().skip(3).step_by(4).copied().collect::<Vec<_>>()
            );
            assert_eq!(c_kv.len(), 18);
        }

        // A step over positions 6..7 that stops after layer 0.
        cache.reserve(1).unwrap();
        cache
            .write_on_device(0, 6, &tensor(rows(0, 6..7, 5.0)))
            .unwrap();
        cache.discard_device_writes();
        assert_eq!(cache.len(), 6);
        // The next step rewrites position 6 on the host road: the mirror reads it from there.
        cache.write(0, 6, &rows(0, 6..7, 9.0));
        let mut want = rows(0, 0..6, 0.0);
        want.extend(rows(0, 6..7, 9.0));
        assert_eq!(device_rows(&mut cache, 0, 7), want);
    }

    #[test]
    fn a_truncation_drops_rows_owed_to_the_pages() {
        let mut cache = cache();
        cache.reserve(3).unwrap();
        cache
            .write_on_device(0, 0, &tensor(rows(0, 0..3, 1.0)))
            .unwrap();
        cache.truncate(0);
        cache.commit_device_writes().unwrap();
        cache.reserve(3).unwrap();
        assert_eq!(
            cache.gather(0, 3).0,
            vec![0.0; 9],
            "nothing reached the pages"
        );
    }
}
