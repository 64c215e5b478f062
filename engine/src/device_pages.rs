//! The latent pages' copies on the compute device (a GPU), shared the way the pages are.
//!
//! Each page pool has one device pool: per layer a tensor of `slots x page_tokens` rows. A page
//! read or written on the device holds a slot (given back when the page is dropped) and knows,
//! per layer, how many of its rows there equal its host rows. Sequences that share a page (the
//! prefix tree hands the same pages to every keystroke over a cached prefix) share its slot,
//! so a keystroke finds the prefix already on the device and copies only what is new; the
//! attention kernel reads the slots through a page table.
//!
//! The host pages stay the truth: a step on the device writes its rows to the slots first and
//! the cache commits them to the host pages at the end of the step (see `LatentCache`); a
//! write on the host forgets the device's rows from there.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use candle_core::{DType, Device, Tensor};

use crate::error::{EngineError, Result};
use crate::page_pool::PageLayout;

/// Slots a device pool first has room for; it doubles when full.
const FIRST_SLOTS: usize = 64;

/// The device copies of one page pool's pages.
pub(crate) struct DevicePagePool {
    layout: PageLayout,
    device: Device,
    state: Mutex<SlotState>,
    /// Rows copied from the host pages so far (what sharing the slots saves shows here).
    uploaded_rows: AtomicUsize,
}

struct SlotState {
    /// Per layer, [capacity x page_tokens, row] f32 on the device.
    layers: Vec<Tensor>,
    capacity: usize,
    free: Vec<usize>,
    /// Slots from here on were never handed out.
    next: usize,
}

/// A page's slot, and per layer how many of its first rows equal the host page's.
pub(crate) struct DeviceSlot {
    pool: Arc<DevicePagePool>,
    pub(crate) slot: usize,
    pub(crate) synced: Vec<usize>,
}

impl Drop for DeviceSlot {
    fn drop(&mut self) {
        self.pool.lock().free.push(self.slot);
    }
}

impl DevicePagePool {
    pub(crate) fn new(layout: PageLayout, device: &Device) -> Arc<Self> {
        Arc::new(Self {
            layout,
            device: device.clone(),
            state: Mutex::new(SlotState {
                layers: Vec::new(),
                capacity: 0,
                free: Vec::new(),
                next: 0,
            }),
            uploaded_rows: AtomicUsize::new(0),
        })
    }

    pub(crate) fn device(&self) -> &Device {
        &self.device
    }

    /// A free slot (the pool grows when none is left), nothing of it synced.
    pub(crate) fn allocate(self: &Arc<Self>) -> Result<DeviceSlot> {
        let mut state = self.lock();
        let slot = match state.free.pop() {
            Some(slot) => slot,
            None => {
                if state.next == state.capacity {
                    self.grow(&mut state)?;
                }
                state.next += 1;
                state.next - 1
            }
        };
        Ok(DeviceSlot {
            pool: self.clone(),
            slot,
            synced: vec![0; self.layout.layers],
        })
    }

    /// Twice the slots (at least `FIRST_SLOTS`), the old ones copied over.
    fn grow(&self, state: &mut SlotState) -> Result<()> {
        let capacity = (2 * state.capacity).max(FIRST_SLOTS);
        let rows = capacity * self.layout.page_tokens;
        let layers = (0..self.layout.layers)
            .map(|layer| {
                let grown = Tensor::zeros((rows, self.layout.row()), DType::F32, &self.device)?;
                if let Some(old) = state.layers.get(layer) {
                    grown.slice_set(old, 0, 0)?;
                }
                Ok(grown)
            })
            .collect::<Result<Vec<_>>>()
            .map_err(|e| match e {
                EngineError::Compute(e) => EngineError::CacheFull(format!(
                    "no device memory for {capacity} pages of the KV cache: {e}"
                )),
                other => other,
            })?;
        state.layers = layers;
        state.capacity = capacity;
        Ok(())
    }

    /// `layer`'s rows, [slots x page_tokens, row]: slot s holds rows `s * page_tokens..`.
    pub(crate) fn layer(&self, layer: usize) -> Tensor {
        self.lock().layers[layer].clone()
    }

    /// Writes `rows` ([n, row] f32 on the device) into `layer` from row `first_row` of the
    /// slots (`slot * page_tokens + offset`).
    pub(crate) fn write(&self, layer: usize, first_row: usize, rows: &Tensor) -> Result<()> {
        self.lock().layers[layer].slice_set(rows, 0, first_row)?;
        Ok(())
    }

    /// Uploads host `values` (whole rows) into `layer` from row `first_row` of the slots.
    pub(crate) fn upload(&self, layer: usize, first_row: usize, values: Vec<f32>) -> Result<()> {
        let row = self.layout.row();
        let count = values.len() / row;
        let rows = Tensor::from_vec(values, (count, row), &self.device)?;
        self.uploaded_rows.fetch_add(count, Ordering::Relaxed);
        self.write(layer, first_row, &rows)
    }

    /// Rows copied from the host pages so far, over all layers.
    pub(crate) fn uploaded_rows(&self) -> usize {
        self.uploaded_rows.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> PageLayout {
        PageLayout {
            page_tokens: 2,
            layers: 2,
            kv_lora: 1,
            rope: 1,
        }
    }

    #[test]
    fn slots_are_reused_and_the_pool_grows_keeping_what_it_held() {
        let pool = DevicePagePool::new(layout(), &Device::Cpu);
        let first = pool.allocate().unwrap();
        assert_eq!(first.slot, 0);
        pool.upload(1, 0, vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        let mut held: Vec<DeviceSlot> =
            (1..FIRST_SLOTS).map(|_| pool.allocate().unwrap()).collect();
        // Full: the next slot grows the pool, and slot 0's rows survive the move.
        let past = pool.allocate().unwrap();
        assert_eq!(past.slot, FIRST_SLOTS);
        assert_eq!(pool.layer(1).dims(), &[2 * FIRST_SLOTS * 2, 2]);
        let kept = pool.layer(1).narrow(0, 0, 2).unwrap();
        assert_eq!(kept.to_vec2::<f32>().unwrap(), [[1.0, 2.0], [3.0, 4.0]]);
        // A dropped page's slot is the next one handed out.
        let freed = held.pop().unwrap().slot;
        assert_eq!(pool.allocate().unwrap().slot, freed);
        drop(first);
    }
}
