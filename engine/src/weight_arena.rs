//! Memory for the weights the loader rearranges (rows interleaved in eights): a few large
//! anonymous maps, each region handed out once, that Linux is asked to back with 2 MiB pages.
//!
//! Why: a decode step streams every weight it uses once, straight from memory. In 4 KiB pages
//! the hardware prefetchers stop at every page's end and each page costs a TLB miss. On the
//! shared 2-core development machine the gain is real but noisy: whole decode steps of a
//! lite:4 Q4_K_M file took a median 21.79 ms in 2 MiB pages against 23.41 ms (8 alternating
//! rounds, without the kernels' prefetching); the `moe_decode` bench's MoE products ran 0.98x
//! to 1.14x as fast in 2 MiB pages as in 4 KiB pages (6 runs). Where the kernel says no
//! (transparent huge pages off), the maps are ordinary memory and nothing else changes.

use std::sync::{Arc, Mutex};

use memmap2::{MmapOptions, MmapRaw};

use crate::quantized::SharedBytes;

/// The size of a huge page, to which every map's start is aligned.
const HUGE_PAGE_BYTES: usize = 2 << 20;

/// Bytes one map holds unless a region needs more. Only the pages a region touches are ever
/// backed by memory, so an unfilled tail costs address space, not RAM.
const CHUNK_BYTES: usize = 256 << 20;

/// Regions start on cache lines.
const REGION_ALIGN: usize = 64;

/// Hands out regions of large anonymous maps, one after another; a region keeps its map alive,
/// so the maps go when the last weight in them does (the arena itself is dropped after loading).
pub struct WeightArena {
    chunk_bytes: usize,
    open: Mutex<Option<OpenChunk>>,
}

/// The map regions are being cut from, and how much of it is taken.
struct OpenChunk {
    chunk: Arc<Chunk>,
    used: usize,
}

/// One anonymous map; usable bytes start at `base` (its first 2 MiB boundary).
struct Chunk {
    map: MmapRaw,
    base: usize,
    len: usize,
}

/// `len` bytes of a chunk at `start` (past its base), which no other region overlaps.
struct Region {
    chunk: Arc<Chunk>,
    start: usize,
    len: usize,
}

impl AsRef<[u8]> for Region {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: the bytes lie inside the map (`reserve` kept `start + len <= chunk.len`), the
        // map lives as long as `self.chunk`, and no one writes them any more: only `place`
        // wrote them, through the one `&mut` it made, before this region existed.
        unsafe {
            std::slice::from_raw_parts(
                self.chunk.map.as_ptr().add(self.chunk.base + self.start),
                self.len,
            )
        }
    }
}

impl Default for WeightArena {
    fn default() -> Self {
        Self::with_chunk_bytes(CHUNK_BYTES)
    }
}

impl WeightArena {
    pub fn new() -> Self {
        Self::default()
    }

    /// An arena whose maps hold `chunk_bytes` (the tests' small ones).
    pub fn with_chunk_bytes(chunk_bytes: usize) -> Self {
        Self {
            chunk_bytes,
            open: Mutex::new(None),
        }
    }

    /// `len` fresh (zeroed) bytes written by `fill`, as bytes of their own. When the system
    /// gives no map, the bytes live in an ordinary allocation instead.
    pub fn place(&self, len: usize, fill: impl FnOnce(&mut [u8])) -> SharedBytes {
        let Some((chunk, start)) = self.reserve(len) else {
            let mut bytes = vec![0u8; len];
            fill(&mut bytes);
            return Arc::new(bytes);
        };
        // SAFETY: `reserve` gave `start..start + len` of the chunk to this call alone (no other
        // region overlaps it and no region of it exists yet), inside the map, which `chunk`
        // keeps alive; a fresh anonymous map reads as zeros.
        let bytes = unsafe {
            std::slice::from_raw_parts_mut(chunk.map.as_mut_ptr().add(chunk.base + start), len)
        };
        fill(bytes);
        Arc::new(Region { chunk, start, len })
    }

    /// A region of `len` bytes in the open chunk, or in a new one when it has no room (or
    /// `None` when no map could be made).
    fn reserve(&self, len: usize) -> Option<(Arc<Chunk>, usize)> {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(current) = open.as_mut() {
            let start = current.used.next_multiple_of(REGION_ALIGN);
            if start + len <= current.chunk.len {
                current.used = start + len;
                return Some((current.chunk.clone(), start));
            }
        }
        let chunk = Arc::new(Chunk::new(len.max(self.chunk_bytes))?);
        // A region larger than a chunk gets a map of its own and leaves the open one open.
        if len <= self.chunk_bytes {
            *open = Some(OpenChunk {
                chunk: chunk.clone(),
                used: len,
            });
        }
        Some((chunk, 0))
    }
}

/// Bytes of this process's anonymous memory in huge pages (Linux's `AnonHugePages`), to see
/// whether the kernel granted the arena's advice; `None` where the system does not say.
pub fn process_huge_page_bytes() -> Option<u64> {
    let rollup = std::fs::read_to_string("/proc/self/smaps_rollup").ok()?;
    let line = rollup.lines().find(|l| l.starts_with("AnonHugePages:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

impl Chunk {
    /// A map with at least `len` usable bytes from a 2 MiB boundary, advised huge pages.
    fn new(len: usize) -> Option<Self> {
        let len = len.max(1).next_multiple_of(HUGE_PAGE_BYTES);
        let map: MmapRaw = MmapOptions::new()
            .len(len + HUGE_PAGE_BYTES)
            .map_anon()
            .ok()?
            .into();
        let address = map.as_ptr() as usize;
        let base = address.next_multiple_of(HUGE_PAGE_BYTES) - address;
        // Only a hint: without transparent huge pages the map is ordinary memory.
        #[cfg(target_os = "linux")]
        let _ = map.advise_range(memmap2::Advice::HugePage, base, len);
        Some(Self { map, base, len })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_hold_what_was_written_and_do_not_overlap() {
        let arena = WeightArena::with_chunk_bytes(4 << 20);
        // Sizes that fill a chunk unevenly, one larger than a chunk, and an empty one.
        let sizes = [1000, 3 << 20, 777, 1 << 20, 9 << 20, 0, 5, 2 << 20];
        let regions: Vec<SharedBytes> = sizes
            .iter()
            .enumerate()
            .map(|(i, &len)| {
                arena.place(len, |bytes| {
                    assert!(bytes.iter().all(|&b| b == 0), "fresh bytes are zeros");
                    for (j, b) in bytes.iter_mut().enumerate() {
                        *b = (i * 31 + j) as u8;
                    }
                })
            })
            .collect();
        drop(arena);
        for (i, (region, &len)) in regions.iter().zip(&sizes).enumerate() {
            let bytes = (**region).as_ref();
            assert_eq!(bytes.len(), len);
            assert!(
                bytes
                    .iter()
                    .enumerate()
                    .all(|(j, &b)| b == (i * 31 + j) as u8),
                "region {i} was overwritten"
            );
            assert_eq!(bytes.as_ptr() as usize % REGION_ALIGN, 0, "region {i}");
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_process_reports_its_huge_pages() {
        assert!(process_huge_page_bytes().is_some());
    }

    #[test]
    fn chunks_start_on_huge_page_boundaries() {
        let chunk = Chunk::new(3 << 20).expect("an anonymous map");
        assert_eq!(
            (chunk.map.as_ptr() as usize + chunk.base) % HUGE_PAGE_BYTES,
            0
        );
        assert!(chunk.base + chunk.len <= chunk.map.len());
        assert_eq!(chunk.len, 4 << 20);
    }
}
