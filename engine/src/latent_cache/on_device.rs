//! A cache's latent rows on the compute device (a GPU): the steps there write their rows to the
//! pages' device slots (`DevicePagePool`), read a layer through a page table of slots, and
//! commit the rows to the host pages once per step.

use std::sync::Arc;

use candle_core::{Device, Tensor};

use super::LatentCache;
use crate::device_pages::{DevicePagePool, DeviceSlot};
use crate::error::Result;
use crate::page_pool::Page;

/// Rows written on the device that the host pages do not hold yet.
pub(super) struct OwedRows {
    layer: usize,
    start: usize,
    /// [t, row] f32 on the device.
    rows: Tensor,
}

/// `page`'s device slot, given one from `pool` if it has none.
fn slot_of<'a>(
    guard: &'a mut std::sync::MutexGuard<'_, Option<DeviceSlot>>,
    pool: &Arc<DevicePagePool>,
) -> Result<&'a mut DeviceSlot> {
    Ok(match guard.take() {
        Some(slot) => guard.insert(slot),
        None => guard.insert(pool.allocate()?),
    })
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
            let synced = slot.synced[layer];
            if synced < offset {
                let values = page.layer(layer)[synced * row..offset * row].to_vec();
                pool.upload(layer, slot.slot * page_tokens + synced, values)?;
            }
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
    /// ([slots x page_tokens, row]) and the slot of each page, in position order. Rows the
    /// device lacks are copied from the host pages first (a prefix already there, as the prefix
    /// tree shares it, costs nothing).
    pub(crate) fn device_pages(
        &mut self,
        layer: usize,
        visible: usize,
        device: &Device,
    ) -> Result<(Tensor, Vec<u32>)> {
        let layout = *self.layout();
        let (page_tokens, row) = (layout.page_tokens, layout.row());
        let pages = visible.div_ceil(page_tokens);
        assert!(pages <= self.pages.len(), "rows past the reserved pages");
        let pool = self.device_pool(device)?;
        let mut table = Vec::with_capacity(pages);
        // (first row in the slots, values): pages whose missing rows follow one another in the
        // slots go in one copy.
        let mut uploads: Vec<(usize, Vec<f32>)> = Vec::new();
        for (index, page) in self.pages[..pages].iter().enumerate() {
            let wanted = (visible - index * page_tokens).min(page_tokens);
            let mut guard = page.device_slot();
            let slot = slot_of(&mut guard, &pool)?;
            table.push(slot.slot as u32);
            let synced = slot.synced[layer];
            if synced >= wanted {
                continue;
            }
            let first = slot.slot * page_tokens + synced;
            let values = &Page::layer(page, layer)[synced * row..wanted * row];
            match uploads.last_mut() {
                Some((to, pending)) if *to + pending.len() / row == first => {
                    pending.extend_from_slice(values)
                }
                _ => uploads.push((first, values.to_vec())),
            }
            slot.synced[layer] = wanted;
        }
        for (first, values) in uploads {
            pool.upload(layer, first, values)?;
        }
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
        let (rows, table) = self.device_pages(layer, visible, device)?;
        let indices: Vec<u32> = (0..visible)
            .map(|position| {
                table[position / page_tokens] * page_tokens as u32 + (position % page_tokens) as u32
            })
            .collect();
        let indices = Tensor::from_vec(indices, visible, device)?;
        Ok(rows.index_select(&indices, 0)?)
    }
}
