//! Fixed-size pages of latent KV and the pool that accounts for them against one byte budget.
//!
//! A page holds `page_tokens` consecutive positions of one sequence for every layer: per layer,
//! `page_tokens` rows of `[c_kv (kv_lora_rank) | k_pe (qk_rope_head_dim)]` in f32. Pages are
//! shared by `Arc`: a page referenced from more than one place is never written (writers copy it
//! first), so a strong count of one means "private to its holder".

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use candle_core::Device;

use crate::config::ModelConfig;
use crate::device_pages::{DevicePagePool, DeviceSlot};
use crate::error::{EngineError, Result};

/// Tokens per page unless configured otherwise.
pub const DEFAULT_PAGE_TOKENS: usize = 32;

/// Freed page buffers kept for reuse, so a steady workload does not return to the allocator.
const SPARE_BUFFERS: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageLayout {
    pub page_tokens: usize,
    pub layers: usize,
    pub kv_lora: usize,
    pub rope: usize,
}

impl PageLayout {
    pub fn for_model(config: &ModelConfig, page_tokens: usize) -> Self {
        Self {
            page_tokens: page_tokens.max(1),
            layers: config.num_hidden_layers,
            kv_lora: config.kv_lora_rank,
            rope: config.qk_rope_head_dim,
        }
    }

    /// Floats in one token's row of one layer.
    pub fn row(&self) -> usize {
        self.kv_lora + self.rope
    }

    pub fn bytes_per_token(&self) -> usize {
        self.row() * self.layers * std::mem::size_of::<f32>()
    }

    pub fn page_floats(&self) -> usize {
        self.page_tokens * self.layers * self.row()
    }

    pub fn page_bytes(&self) -> usize {
        self.page_floats() * std::mem::size_of::<f32>()
    }

    /// Where layer `layer`'s rows start inside a page.
    pub fn layer_offset(&self, layer: usize) -> usize {
        layer * self.page_tokens * self.row()
    }
}

/// Hands out pages up to a budget and takes their buffers back when they are dropped.
pub struct PagePool {
    layout: PageLayout,
    /// `None`: unbounded (a private cache whose owner decides its length).
    budget_pages: Option<usize>,
    state: Mutex<PoolState>,
    /// The pages' copies on the compute device, made when a step first runs there.
    device: OnceLock<Arc<DevicePagePool>>,
}

#[derive(Default)]
struct PoolState {
    live: usize,
    spare: Vec<Box<[f32]>>,
}

impl PagePool {
    pub fn new(layout: PageLayout, budget_bytes: Option<usize>) -> Arc<Self> {
        let budget_pages = budget_bytes.map(|bytes| (bytes / layout.page_bytes()).max(1));
        Arc::new(Self {
            layout,
            budget_pages,
            state: Mutex::new(PoolState::default()),
            device: OnceLock::new(),
        })
    }

    /// Latent rows copied from these pages to their device copies so far (0 off the device).
    pub fn rows_copied_to_device(&self) -> usize {
        self.device.get().map_or(0, |pool| pool.uploaded_rows())
    }

    /// The device pool of these pages' copies on `device` (one device per pool).
    pub(crate) fn device_pages(&self, device: &Device) -> Result<&Arc<DevicePagePool>> {
        let pool = self
            .device
            .get_or_init(|| DevicePagePool::new(self.layout, device));
        if !pool.device().same_device(device) {
            return Err(EngineError::Internal(format!(
                "the KV cache's pages are on {:?}, not {device:?}",
                pool.device().location()
            )));
        }
        Ok(pool)
    }

    pub fn layout(&self) -> &PageLayout {
        &self.layout
    }

    pub fn budget_pages(&self) -> Option<usize> {
        self.budget_pages
    }

    /// Pages currently allocated (held by a cache tree or a sequence).
    pub fn live_pages(&self) -> usize {
        self.lock().live
    }

    /// Pages that can still be allocated without evicting; `None` when unbounded.
    pub fn free_pages(&self) -> Option<usize> {
        self.budget_pages
            .map(|budget| budget.saturating_sub(self.live_pages()))
    }

    /// A new page (contents unspecified), or an error when the budget is reached.
    pub fn allocate(self: &Arc<Self>) -> Result<Page> {
        let mut state = self.lock();
        if let Some(budget) = self.budget_pages
            && state.live >= budget
        {
            return Err(EngineError::CacheFull(format!(
                "all {budget} pages ({} MiB) of the KV cache are in use; raise the cache budget",
                (budget * self.layout.page_bytes()) >> 20
            )));
        }
        state.live += 1;
        let data = state.spare.pop();
        drop(state);
        let data = data.unwrap_or_else(|| vec![0f32; self.layout.page_floats()].into_boxed_slice());
        Ok(Page {
            data,
            pool: self.clone(),
            device: Mutex::new(None),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One page of latents. Dropping it returns its memory to the pool.
pub struct Page {
    data: Box<[f32]>,
    pool: Arc<PagePool>,
    /// This page's copy on the compute device, once a step there read or wrote it.
    device: Mutex<Option<DeviceSlot>>,
}

impl Page {
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }

    /// The rows of one layer: `page_tokens` x (kv_lora + rope).
    pub fn layer(&self, layer: usize) -> &[f32] {
        let layout = &self.pool.layout;
        &self.data[layout.layer_offset(layer)..][..layout.page_tokens * layout.row()]
    }

    /// This page's device slot, if it has one (locked: sequences sharing the page share it).
    pub(crate) fn device_slot(&self) -> MutexGuard<'_, Option<DeviceSlot>> {
        self.device.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A private copy of this page (counted against the budget); its device copy is made anew
    /// when needed.
    pub fn duplicate(&self) -> Result<Page> {
        let mut copy = self.pool.allocate()?;
        copy.data.copy_from_slice(&self.data);
        Ok(copy)
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        let mut state = self.pool.lock();
        state.live -= 1;
        if state.spare.len() < SPARE_BUFFERS {
            state.spare.push(std::mem::take(&mut self.data));
        }
    }
}

/// A default cache budget: a quarter of the memory available now, at most 2 GiB, at least 64 pages.
pub fn default_budget_bytes(layout: &PageLayout) -> usize {
    let available = available_memory_bytes().unwrap_or(4 << 30);
    (available / 4).min(2 << 30).max(64 * layout.page_bytes())
}

fn available_memory_bytes() -> Option<usize> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
