//! One sequence's cached latent rows, mirrored on the compute device (a GPU) so that attention
//! there reads them in place. Without it, every decode step copied each layer's whole cache
//! from host memory: at 8K tokens of DeepSeek-V2-Lite, 19 MB per layer and about half a
//! gigabyte per token over PCIe. With it, a step uploads only the rows the cache wrote since
//! the last one (a decode step: one row per layer).
//!
//! The host pages stay the truth (the prefix tree shares them between sequences; the mirror
//! does not take part in that). Each layer's mirror knows up to which position it equals them;
//! the cache calls [`DeviceLatents::forget_from`] whenever rows below that change (a write over
//! old positions, a truncation), and [`DeviceLatents::rows`] uploads what is missing.
//!
//! A step on the GPU writes its new rows here first ([`DeviceLatents::write`]), and the cache
//! copies them all to the host pages once at the end of the step: a copy to the host waits for
//! the stream, and one per layer would stall the GPU between layers.

use candle_core::{DType, Device, Tensor};

use crate::error::Result;

/// Rows a layer's mirror is first given room for; it doubles when full.
const FIRST_CAPACITY: usize = 1024;

#[derive(Default)]
pub(crate) struct DeviceLatents {
    layers: Vec<Option<LayerMirror>>,
}

struct LayerMirror {
    /// [capacity, row] in f32 on the device.
    rows: Tensor,
    /// Rows 0..synced equal the host cache's positions 0..synced.
    synced: usize,
}

impl DeviceLatents {
    /// Positions from `position` on are about to change (or are gone) in every layer.
    pub(crate) fn forget_from(&mut self, position: usize) {
        for mirror in self.layers.iter_mut().flatten() {
            mirror.synced = mirror.synced.min(position);
        }
    }

    /// Positions from `position` on are about to change in `layer`.
    pub(crate) fn forget_layer_from(&mut self, layer: usize, position: usize) {
        if let Some(Some(mirror)) = self.layers.get_mut(layer) {
            mirror.synced = mirror.synced.min(position);
        }
    }

    /// `layer`'s first `visible` rows as `[room, row]` on `device` (`room >= visible`: rows past
    /// `visible` hold whatever was there), after uploading the rows from the last synced
    /// position to `visible`, which `read(from, to)` gives from the host cache.
    pub(crate) fn rows(
        &mut self,
        layer: usize,
        visible: usize,
        room: usize,
        row: usize,
        device: &Device,
        read: impl FnOnce(usize, usize) -> Vec<f32>,
    ) -> Result<Tensor> {
        let mirror = self.synced_to(layer, visible, room, row, device, read)?;
        Ok(mirror.rows.narrow(0, 0, room.max(visible))?)
    }

    /// Writes `fresh` ([t, row] f32 on `device`) at positions `start..start + t` of `layer`'s
    /// mirror, after uploading what the mirror lacks below `start` (as [`Self::rows`] does);
    /// the positions past `start + t` are forgotten. The caller owes the host the same rows.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn write(
        &mut self,
        layer: usize,
        start: usize,
        fresh: &Tensor,
        room: usize,
        row: usize,
        device: &Device,
        read: impl FnOnce(usize, usize) -> Vec<f32>,
    ) -> Result<()> {
        let end = start + fresh.dim(0)?;
        let mirror = self.synced_to(layer, start, room.max(end), row, device, read)?;
        mirror.rows.slice_set(fresh, 0, start)?;
        mirror.synced = end;
        Ok(())
    }

    /// `layer`'s mirror with room for `room` rows and equal to the host up to `visible`.
    fn synced_to(
        &mut self,
        layer: usize,
        visible: usize,
        room: usize,
        row: usize,
        device: &Device,
        read: impl FnOnce(usize, usize) -> Vec<f32>,
    ) -> Result<&mut LayerMirror> {
        if self.layers.len() <= layer {
            self.layers.resize_with(layer + 1, || None);
        }
        let room = room.max(visible);
        let slot = &mut self.layers[layer];
        let capacity = slot.as_ref().map_or(0, |m| m.rows.dims()[0]);
        if capacity < room {
            let capacity = room.max(FIRST_CAPACITY).max(2 * capacity);
            let rows = Tensor::zeros((capacity, row), DType::F32, device)?;
            let synced = match slot.take() {
                Some(old) if old.synced > 0 => {
                    rows.slice_set(&old.rows.narrow(0, 0, old.synced)?, 0, 0)?;
                    old.synced
                }
                _ => 0,
            };
            *slot = Some(LayerMirror { rows, synced });
        }
        let mirror = slot.as_mut().expect("made above");
        if mirror.synced < visible {
            let values = read(mirror.synced, visible);
            let fresh = Tensor::from_vec(values, (visible - mirror.synced, row), device)?;
            mirror.rows.slice_set(&fresh, 0, mirror.synced)?;
            mirror.synced = visible;
        }
        Ok(mirror)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host "cache" whose row p is [p, p + 0.5] plus `generation` (so rewritten rows differ).
    fn host(from: usize, to: usize, generation: f32) -> Vec<f32> {
        (from..to)
            .flat_map(|p| [p as f32 + generation, p as f32 + 0.5 + generation])
            .collect()
    }

    fn mirrored(latents: &mut DeviceLatents, visible: usize, generation: f32) -> Vec<f32> {
        let rows = latents
            .rows(
                0,
                visible,
                visible.next_multiple_of(4),
                2,
                &Device::Cpu,
                |from, to| host(from, to, generation),
            )
            .unwrap();
        assert_eq!(rows.dims(), &[visible.next_multiple_of(4), 2]);
        first_rows(&rows, visible)
    }

    fn first_rows(rows: &Tensor, count: usize) -> Vec<f32> {
        let first = rows.narrow(0, 0, count).unwrap();
        first.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn the_mirror_uploads_only_new_rows_and_follows_rewrites_and_growth() {
        let mut latents = DeviceLatents::default();
        assert_eq!(mirrored(&mut latents, 5, 0.0), host(0, 5, 0.0));
        // A decode step: one more row, and only it is read from the host.
        let mut asked = None;
        latents
            .rows(0, 6, 8, 2, &Device::Cpu, |from, to| {
                asked = Some((from, to));
                host(from, to, 0.0)
            })
            .unwrap();
        assert_eq!(asked, Some((5, 6)));
        // Nothing new: nothing read.
        latents
            .rows(0, 6, 8, 2, &Device::Cpu, |_, _| panic!("no row is missing"))
            .unwrap();
        // Positions 3.. rewritten (an edit): they come again, with their new values.
        latents.forget_layer_from(0, 3);
        let mut want = host(0, 3, 0.0);
        want.extend(host(3, 7, 1.0));
        let rows = latents
            .rows(0, 7, 8, 2, &Device::Cpu, |from, to| {
                assert_eq!((from, to), (3, 7));
                host(from, to, 1.0)
            })
            .unwrap();
        assert_eq!(first_rows(&rows, 7), want);
        // Growth past the first capacity keeps the synced rows and reads only the rest.
        let far = FIRST_CAPACITY + 3;
        latents
            .rows(0, far, far + 1, 2, &Device::Cpu, |from, to| {
                assert_eq!((from, to), (7, far));
                host(from, to, 1.0)
            })
            .unwrap();
        latents.forget_from(2);
        let rows = latents
            .rows(0, far, far + 1, 2, &Device::Cpu, |from, to| {
                assert_eq!((from, to), (2, far));
                host(from, to, 2.0)
            })
            .unwrap();
        let mut want = host(0, 2, 0.0);
        want.extend(host(2, far, 2.0));
        assert_eq!(first_rows(&rows, far), want);
    }

    #[test]
    fn rows_written_on_the_device_are_read_without_the_host() {
        let mut latents = DeviceLatents::default();
        assert_eq!(mirrored(&mut latents, 3, 0.0), host(0, 3, 0.0));
        // A step writes positions 5..7 with rows 3..5 still missing: those come from the host.
        let fresh = Tensor::from_vec(host(5, 7, 9.0), (2, 2), &Device::Cpu).unwrap();
        latents
            .write(0, 5, &fresh, 8, 2, &Device::Cpu, |from, to| {
                assert_eq!((from, to), (3, 5));
                host(from, to, 0.0)
            })
            .unwrap();
        let rows = latents
            .rows(0, 7, 8, 2, &Device::Cpu, |_, _| {
                panic!("the step's rows are there")
            })
            .unwrap();
        let mut want = host(0, 5, 0.0);
        want.extend(host(5, 7, 9.0));
        assert_eq!(first_rows(&rows, 7), want);
        // Writing over position 4 forgets what lay past it.
        let fresh = Tensor::from_vec(host(4, 5, 7.0), (1, 2), &Device::Cpu).unwrap();
        latents
            .write(0, 4, &fresh, 8, 2, &Device::Cpu, |_, _| {
                panic!("rows 0..4 are there")
            })
            .unwrap();
        let rows = latents
            .rows(0, 6, 8, 2, &Device::Cpu, |from, to| {
                assert_eq!((from, to), (5, 6));
                host(from, to, 1.0)
            })
            .unwrap();
        let mut want = host(0, 4, 0.0);
        want.extend(host(4, 5, 7.0));
        want.extend(host(5, 6, 1.0));
        assert_eq!(first_rows(&rows, 6), want);
    }
}
