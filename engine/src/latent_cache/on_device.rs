//! A cache's latent rows on the compute device (a GPU): the steps there write their rows to the
//! pages' device slots (`DevicePagePool`), read a layer through a page table of slots, and
//! commit the rows to the host pages once per step.

use std::sync::Arc;

use candle_core::{Device, Tensor};

use super::LatentCache;
use crate::device_pages::{DevicePagePool, DeviceSlot};
use crate::error::Result;
use crate::page_pool::Page;

/// The slot of each of a sequence's pages, in position order: on the host (the attention op's
/// checks, and the CPU) and on the rows' device (the kernel's operand). Every layer of a step,
/// and every step until the sequence takes another page, reads the same table, so the cache
/// keeps the last one and copies a table to the device only when it changed: a GPU step does
/// not copy (and wait for) one small host buffer per layer.
pub(crate) struct PageTable {
    pub slots: Vec<u32>,
    /// `slots` as u32 [pages] on the device.
    pub on_device: Tensor,
}

/// Rows written on the device that the host pages do not hold yet.
pub(super) struct OwedRows {
    layer: usize,
    start: usize,
    /// [t, row] f32 on the device.
    rows: Tensor,
}

/// A page's device slot, given one from `pool` if it has none.
fn slot_of<'a>(
    slot: &'a mut Option<DeviceSlot>,
    pool: &Arc<DevicePagePool>,
) -> Result<&'a mut DeviceSlot> {
    if slot.is_none() {
        *slot = Some(pool.allocate()?);
    }
    Ok(slot.as_mut().expect("given one above"))
}

/// Host rows one layer's slots lack, gathered into copies: rows that follow one another in the
/// slots (consecutive slots, whole pages) go in one copy.
struct Uploads {
    layer: usize,
    page_tokens: usize,
    row: usize,
    /// (first row in the slots, values)
    copies: Vec<(usize, Vec<f32>)>,
}

impl Uploads {
    fn new(layer: usize, page_tokens: usize, row: usize) -> Self {
        Self {
            layer,
            page_tokens,
            row,
            copies: Vec::new(),
        }
    }

    /// Queues what `slot` lacks of `page`'s first `upto` rows, and counts them as there.
    fn catch_up(&mut self, page: &Page, slot: &mut DeviceSlot, upto: usize) {
        let synced = slot.synced[self.layer];
        if synced >= upto {
            return;
        }
        let first = slot.slot * self.page_tokens + synced;
        let values = &page.layer(self.layer)[synced * self.row..upto * self.row];
        match self.copies.last_mut() {
            Some((to, pending)) if *to + pending.len() / self.row == first => {
                pending.extend_from_slice(values)
            }
            _ => self.copies.push((first, values.to_vec())),
        }
        slot.synced[self.layer] = upto;
    }

    fn send(self, pool: &DevicePagePool) -> Result<()> {
        for (first, values) in self.copies {
            pool.upload(self.layer, first, values)?;
        }
        Ok(())
    }
}

impl LatentCache {
    fn device_pool(&self, device: &Device) -> Result<Arc<DevicePagePool>> {
        Ok(self.pool.device_pages(device)?.clone())
    }

    /// Writes one layer's rows (`[t, kv_lora + rope]` f32 on the device) for positions
    /// `start..`, after `reserve`, to the pages' device slots only: the host pages get them at
    /// [`Self::commit_device_writes`].
    pub(crate) fn write_on_device(
        &mut self,
        layer: usize,
        start: usize,
        rows: &Tensor,
    ) -> Result<()> {
        let layout = *self.layout();
        let (page_tokens, row) = (layout.page_tokens, layout.row());
        let end = start + rows.dim(0)?;
        assert!(
            end <= self.pages.len() * page_tokens,
            "rows past the reserved pages"
        );
        let pool = self.device_pool(rows.device())?;
        let mut uploads = Uploads::new(layer, page_tokens, row);
        // (first row in the slots, first row of `rows`, rows): pieces that follow one another
        // in both go in one copy.
        let mut runs: Vec<(usize, usize, usize)> = Vec::new();
        let mut position = start;
        while position < end {
            let page = &self.pages[position / page_tokens];
            let offset = position % page_tokens;
            let count = (page_tokens - offset).min(end - position);
            let mut guard = page.device_slot();
            let slot = slot_of(&mut guard, &pool)?;
            // Rows of this page below the step's that the device lacks (a page it never saw).
            uploads.catch_up(page, slot, offset);
            slot.synced[layer] = offset + count;
            let first = slot.slot * page_tokens + offset;
            match runs.last_mut() {
                Some((to, from, len))
                    if *to + *len == first && *from + *len == position - start =>
                {
                    *len += count
                }
                _ => runs.push((first, position - start, count)),
            }
            position += count;
        }
        uploads.send(&pool)?;
        for (to, from, len) in runs {
            pool.write(layer, to, &rows.narrow(0, from, len)?)?;
        }
        self.owed.push(OwedRows {
            layer,
            start,
            rows: rows.clone(),
        });
        Ok(())
    }

    /// Copies the rows written on the device since the last commit to the host pages, in one
    /// copy (one wait for the device per step, not one per layer).
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

    /// Drops the rows written on the device since the last commit (a step that did not
    /// finish). They lie past the cache's length, where the next step writes again, so the
    /// slots may keep them.
    pub(crate) fn discard_device_writes(&mut self) {
        self.owed.clear();
    }

    /// One layer's rows on `device` for positions `0..visible`: the pool's rows of that layer
    /// ([slots x page_tokens, row]) and the page table of their slots, kept on the device while
    /// it stays the same ([`PageTable`]).
    pub(crate) fn device_pages(
        &mut self,
        layer: usize,
        visible: usize,
        device: &Device,
    ) -> Result<(Tensor, Arc<PageTable>)> {
        let (rows, slots) = self.device_slots(layer, visible, device)?;
        let table = match &self.page_table {
            Some(last) if last.slots == slots && last.on_device.device().same_device(device) => {
                last.clone()
            }
            _ => {
                let on_device = Tensor::new(slots.as_slice(), device)?;
                let fresh = Arc::new(PageTable { slots, on_device });
                self.page_table = Some(fresh.clone());
                fresh
            }
        };
        Ok((rows, table))
    }

    /// One layer's rows on `device` for positions `0..visible`: the pool's rows of that layer
    /// ([slots x page_tokens, row]) and the slot of each page, in position order. Rows the
    /// device lacks are copied from the host pages first (a prefix already there, as the prefix
    /// tree shares it, costs nothing).
    fn device_slots(
        &mut self,
        layer: usize,
        visible: usize,
        device: &Device,
    ) -> Result<(Tensor, Vec<u32>)> {
        let layout = *self.layout();
        let page_tokens = layout.page_tokens;
        let pages = visible.div_ceil(page_tokens);
        assert!(pages <= self.pages.len(), "rows past the reserved pages");
        let pool = self.device_pool(device)?;
        let mut table = Vec::with_capacity(pages);
        let mut uploads = Uploads::new(layer, page_tokens, layout.row());
        for (index, page) in self.pages[..pages].iter().enumerate() {
            let mut guard = page.device_slot();
            let slot = slot_of(&mut guard, &pool)?;
            table.push(slot.slot as u32);
            uploads.catch_up(page, slot, (visible - index * page_tokens).min(page_tokens));
        }
        uploads.send(&pool)?;
        Ok((pool.layer(layer), table))
    }

    /// One layer's rows for positions `0..visible` on `device`, in order: [visible, row].
    pub(crate) fn device_rows(
        &mut self,
        layer: usize,
        visible: usize,
        device: &Device,
    ) -> Result<Tensor> {
        let page_tokens = self.layout().page_tokens;
        // The expanded form gathers the rows on the device: it needs no device page table.
        let (rows, slots) = self.device_slots(layer, visible, device)?;
        let indices: Vec<u32> = (0..visible)
            .map(|position| {
                slots[position / page_tokens] * page_tokens as u32 + (position % page_tokens) as u32
            })
            .collect();
        let indices = Tensor::from_vec(indices, visible, device)?;
        Ok(rows.index_select(&indices, 0)?)
    }
}
