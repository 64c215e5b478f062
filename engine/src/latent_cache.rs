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

use self::on_device::OwedRows;
pub(crate) use self::on_device::PageTable;
use crate::error::Result;
use crate::page_pool::{Page, PageLayout, PagePool};

pub struct LatentCache {
    pool: Arc<PagePool>,
    pages: Vec<Arc<Page>>,
    len: usize,
    /// Rows this step wrote on the device and not yet to the pages.
    owed: Vec<OwedRows>,
    /// The last page table read on a device, kept while it stays the same.
    page_table: Option<Arc<PageTable>>,
}

mod on_device;

impl LatentCache {
    /// An empty cache drawing pages from `pool`.
    pub fn new(pool: Arc<PagePool>) -> Self {
        Self {
            pool,
            pages: Vec::new(),
            len: 0,
            owed: Vec::new(),
            page_table: None,
        }
    }

    /// A cache whose first `len` positions are these (possibly shared) pages.
    pub(crate) fn from_pages(pool: Arc<PagePool>, pages: Vec<Arc<Page>>, len: usize) -> Self {
        debug_assert_eq!(pages.len(), len.div_ceil(pool.layout().page_tokens));
        Self {
            pool,
            pages,
            len,
            owed: Vec::new(),
            page_table: None,
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
        self.write_pages(layer, start, rows, &layout);
        // The device's copies of these rows (if any) are stale from here.
        let row = layout.row();
        let end = start + rows.len() / row;
        let mut position = start;
        while position < end {
            let page = &self.pages[position / layout.page_tokens];
            if let Some(slot) = page.device_slot().as_mut() {
                let synced = &mut slot.synced[layer];
                *synced = (*synced).min(position % layout.page_tokens);
            }
            position = (position / layout.page_tokens + 1) * layout.page_tokens;
        }
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

    /// One layer of every page: the page table the attention kernel reads.
    pub(crate) fn layer_pages(&self, layer: usize) -> Vec<&[f32]> {
        self.pages.iter().map(|p| p.layer(layer)).collect()
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

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

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
    /// stops part way leaves the pages as they were, and a host write over its rows makes the
    /// device read them again.
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
        // The next step rewrites position 6 on the host road: the device reads it from there.
        cache.write(0, 6, &rows(0, 6..7, 9.0));
        let mut want = rows(0, 0..6, 0.0);
        want.extend(rows(0, 6..7, 9.0));
        assert_eq!(device_rows(&mut cache, 0, 7), want);
    }

    /// Rows the device never saw (written on the host) are copied there once, in one copy for
    /// pages whose slots follow one another.
    #[test]
    fn rows_from_the_host_are_copied_to_the_device_once() {
        let mut cache = cache();
        cache.reserve(6).unwrap();
        cache.write(0, 0, &rows(0, 0..6, 0.0));
        cache.set_len(6);
        let pool = cache.pool.device_pages(&Device::Cpu).unwrap().clone();
        assert_eq!(device_rows(&mut cache, 0, 6), rows(0, 0..6, 0.0));
        assert_eq!(pool.uploaded_rows(), 6);
        assert_eq!(device_rows(&mut cache, 0, 6), rows(0, 0..6, 0.0));
        assert_eq!(pool.uploaded_rows(), 6, "nothing is copied twice");
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

    /// Two sequences over one prefix (as the prefix tree hands it out) share its device slots;
    /// the one that extends the shared, partly filled tail page writes a copy with a slot of
    /// its own, and reads its rows through the page table in position order.
    #[test]
    fn sequences_sharing_pages_share_their_device_slots() {
        let mut first = cache();
        first.reserve(6).unwrap();
        for layer in 0..2 {
            first
                .write_on_device(layer, 0, &tensor(rows(layer, 0..6, 0.0)))
                .unwrap();
        }
        first.commit_device_writes().unwrap();
        first.set_len(6);
        let (_, first_table) = first.device_pages(1, 6, &Device::Cpu).unwrap();
        // Every layer reads the same table: it goes to the device once.
        let (_, layer_0_table) = first.device_pages(0, 6, &Device::Cpu).unwrap();
        assert!(Arc::ptr_eq(&layer_0_table, &first_table));
        assert_eq!(
            first_table.on_device.to_vec1::<u32>().unwrap(),
            first_table.slots
        );

        let device_pool = first.pool.device_pages(&Device::Cpu).unwrap().clone();
        assert_eq!(
            device_pool.uploaded_rows(),
            0,
            "the step wrote the device first"
        );
        let mut second = LatentCache::from_pages(first.pool.clone(), first.pages().to_vec(), 6);
        let (_, shared_table) = second.device_pages(1, 6, &Device::Cpu).unwrap();
        assert_eq!(
            shared_table.slots, first_table.slots,
            "the prefix's slots are shared"
        );
        assert_eq!(
            device_pool.uploaded_rows(),
            0,
            "the prefix was on the device already"
        );
        assert_eq!(device_rows(&mut second, 0, 6), rows(0, 0..6, 0.0));

        // Positions 6..8 go into a private copy of the tail page (positions 4..8).
        second.reserve(2).unwrap();
        let before = device_pool.uploaded_rows();
        for layer in 0..2 {
            second
                .write_on_device(layer, 6, &tensor(rows(layer, 6..8, 3.0)))
                .unwrap();
        }
        second.commit_device_writes().unwrap();
        second.set_len(8);
        // The copy's rows 4..6 came from the host once per layer; 6..8 were written there.
        assert_eq!(device_pool.uploaded_rows() - before, 2 * 2);
        let (_, table) = second.device_pages(0, 8, &Device::Cpu).unwrap();
        assert_eq!(table.slots[0], first_table.slots[0]);
        assert!(
            !first_table.slots.contains(&table.slots[1]),
            "the copied page has a slot of its own"
        );
        let mut want = rows(0, 0..6, 0.0);
        want.extend(rows(0, 6..8, 3.0));
        assert_eq!(device_rows(&mut second, 0, 8), want);
        // The first sequence's rows are untouched.
        assert_eq!(device_rows(&mut first, 0, 6), rows(0, 0..6, 0.0));
    }
}
