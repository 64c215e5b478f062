//! Logits computed on top of the radix cache equal transformers' cold logits, wherever the cached
//! prefix ends relative to page boundaries, after eviction, and with sequences sharing pages;
//! on the host road and on the device road a GPU takes (run here on the CPU), where sequences
//! sharing pages share their device slots.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use engine::page_pool::PagePool;
use engine::radix_cache::RadixCache;
use engine::{LatentCache, LoadOptions, Logits, Model, load_checkpoint};
use support::max_abs_error;

mod support;

const TOLERANCE: f32 = 1e-4;
const PAGE: usize = 8;

struct Golden {
    model: Model,
    ids: Vec<u32>,
    logits: Vec<Vec<f32>>,
}

/// Both roads: the host's, and the one a GPU load takes.
const ROADS: [Road; 2] = [Road::Host, Road::Device];

#[derive(Debug, Clone, Copy, PartialEq)]
enum Road {
    Host,
    Device,
}

fn golden(name: &str, road: Road) -> Golden {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let mut model = load_checkpoint(&dir, &LoadOptions::default()).unwrap();
    if road == Road::Device {
        model.take_the_device_road().unwrap();
    }
    let reference: HashMap<String, Tensor> =
        candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu).unwrap();
    let ids = reference["input_ids"]
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|x| x as u32)
        .collect();
    Golden {
        model,
        ids,
        logits: reference["logits"].to_vec2::<f32>().unwrap(),
    }
}

fn cache(model: &Model, budget_pages: Option<usize>) -> RadixCache {
    let layout = model.page_layout(PAGE);
    RadixCache::new(PagePool::new(
        layout,
        budget_pages.map(|p| p * layout.page_bytes()),
    ))
}

/// Runs `tokens[sequence.len()..]` on `sequence`, making room first, and returns those rows.
fn run_rest(
    model: &Model,
    cache: &mut RadixCache,
    sequence: &mut LatentCache,
    tokens: &[u32],
) -> Vec<Vec<f32>> {
    let rest = &tokens[sequence.len()..];
    cache.make_room(sequence.pages_needed(rest.len())).unwrap();
    model
        .forward(rest, sequence, Logits::All)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap()
}

/// Computes `tokens` cold and leaves them in the cache.
fn prime(model: &Model, cache: &mut RadixCache, tokens: &[u32]) {
    let mut sequence = cache.match_prefix(tokens, tokens.len().saturating_sub(1));
    run_rest(model, cache, &mut sequence, tokens);
    cache.insert(tokens, sequence);
}

fn assert_rows(what: &str, ours: &[Vec<f32>], reference: &[Vec<f32>]) {
    assert_eq!(ours.len(), reference.len(), "{what}: rows");
    for (position, (a, b)) in ours.iter().zip(reference).enumerate() {
        let error = max_abs_error(a, b);
        assert!(
            error <= TOLERANCE,
            "{what}: row {position} off by {error:e}"
        );
    }
}

#[test]
fn a_hit_at_every_page_boundary_case_gives_the_cold_logits() {
    for (name, road) in ["lite", "v2"]
        .into_iter()
        .flat_map(|n| ROADS.map(|r| (n, r)))
    {
        let g = golden(name, road);
        let t = g.ids.len();
        // 0: nothing shared; 3: inside the first page; 8: exactly one page; 16: several pages;
        // 35: several pages and part of the next; t - 1: all but the last token.
        for hit in [0, 3, PAGE, 2 * PAGE, 35, t - 1] {
            // What is cached diverges from the query right after `hit` tokens, so the page
            // holding position `hit` is shared and has other tokens' latents past it.
            let mut cached: Vec<u32> = g.ids[..hit].to_vec();
            cached.extend(
                [7, 7, 7, 7, 7]
                    .iter()
                    .map(|x| (g.ids.get(hit).copied().unwrap_or(0) + x) % 200 + 1),
            );
            let mut cache = cache(&g.model, None);
            prime(&g.model, &mut cache, &cached);
            let mut sequence = cache.match_prefix(&g.ids, t - 1);
            assert_eq!(sequence.len(), hit, "{name}: matched length");
            let rows = run_rest(&g.model, &mut cache, &mut sequence, &g.ids);
            assert_rows(
                &format!("{name} {road:?}, hit {hit}"),
                &rows,
                &g.logits[hit..],
            );
            // The cached branch is untouched by the query's copy-on-write.
            let again = cache.match_prefix(&cached, cached.len());
            assert_eq!(again.len(), cached.len());
        }
    }
}

#[test]
fn after_eviction_the_prefix_is_recomputed_correctly() {
    for road in ROADS {
        let g = golden("lite", road);
        let t = g.ids.len();
        let mut cache = cache(&g.model, Some(8));
        prime(&g.model, &mut cache, &g.ids[..30]);
        // Unrelated prompts push the first one out of an 8-page budget.
        for k in 0..4u32 {
            let other: Vec<u32> = (0..20).map(|i| (i * 13 + k * 29 + 5) % 300).collect();
            prime(&g.model, &mut cache, &other);
        }
        let counters = cache.counters();
        assert!(
            counters.evictions > 0 && counters.pages_in_use <= 8,
            "{counters:?}"
        );
        let mut sequence = cache.match_prefix(&g.ids, t - 1);
        let hit = sequence.len();
        assert!(hit < 30, "some of the first prompt was evicted (hit {hit})");
        let rows = run_rest(&g.model, &mut cache, &mut sequence, &g.ids);
        assert_rows(
            &format!("{road:?}, re-filled after eviction (hit {hit})"),
            &rows,
            &g.logits[hit..],
        );
    }
}

#[test]
fn two_sequences_sharing_a_prefix_run_interleaved() {
    for road in ROADS {
        let g = golden("v2", road);
        let t = g.ids.len();
        let mut cache = cache(&g.model, Some(64));
        prime(&g.model, &mut cache, &g.ids[..20]);
        let mut a = cache.match_prefix(&g.ids, t);
        let mut b = cache.match_prefix(&g.ids, t);
        assert_eq!((a.len(), b.len()), (20, 20));
        let mut rows_a = Vec::new();
        let mut rows_b = Vec::new();
        // `a` moves in chunks of 5, `b` token by token, alternating; both write past the shared
        // partial page (position 16..20 of page 2), so each must copy it.
        while b.len() < t {
            if a.len() < t {
                let end = (a.len() + 5).min(t);
                cache.make_room(a.pages_needed(end - a.len())).unwrap();
                rows_a.extend(
                    g.model
                        .forward(&g.ids[a.len()..end], &mut a, Logits::All)
                        .unwrap()
                        .to_vec2::<f32>()
                        .unwrap(),
                );
            }
            cache.make_room(b.pages_needed(1)).unwrap();
            rows_b.extend(
                g.model
                    .forward(&g.ids[b.len()..b.len() + 1], &mut b, Logits::All)
                    .unwrap()
                    .to_vec2::<f32>()
                    .unwrap(),
            );
        }
        assert_rows(&format!("{road:?}, sequence a"), &rows_a, &g.logits[20..]);
        assert_rows(&format!("{road:?}, sequence b"), &rows_b, &g.logits[20..]);
        // Each step wrote its rows on the device first; the shared prefix was there already: only
        // the partial page each sequence copied (positions 16..20) came from the host, per layer.
        let copied = cache.counters().rows_copied_to_device;
        let expected = match road {
            Road::Host => 0,
            Road::Device => 2 * 4 * g.model.config().num_hidden_layers,
        };
        assert_eq!(copied, expected, "{road:?}: rows copied to the device");
        cache.insert(&g.ids, a);
        cache.insert(&g.ids, b);
        assert_eq!(
            cache.counters().pages_in_use,
            cache.counters().tree_pages,
            "no page leaked"
        );
    }
}

/// A stop asked for inside a chunk (before its second layer) drops that chunk: the cache keeps
/// the length it had, and running the tokens again gives the reference logits.
#[test]
fn a_stop_inside_a_chunk_commits_nothing_and_the_cache_still_serves() {
    for road in ROADS {
        let g = golden("lite", road);
        let mut cache = cache(&g.model, None);
        let mut sequence = cache.match_prefix(&g.ids, 0);
        let half = g.ids.len() / 2;
        run_rest(&g.model, &mut cache, &mut sequence, &g.ids[..half]);
        assert_eq!(sequence.len(), half);
        let asked = std::cell::Cell::new(0);
        cache
            .make_room(sequence.pages_needed(g.ids.len() - half))
            .unwrap();
        // The first question comes before the chunk, the second before layer 0, the third before
        // layer 1: stop there.
        let stopped = g
            .model
            .forward_until(&g.ids[half..], &mut sequence, Logits::All, &|| {
                asked.set(asked.get() + 1);
                asked.get() == 3
            })
            .unwrap();
        assert!(stopped.is_none());
        assert_eq!(asked.get(), 3);
        assert_eq!(sequence.len(), half, "the stopped chunk committed nothing");
        let rest = run_rest(&g.model, &mut cache, &mut sequence, &g.ids);
        for (position, (ours, reference)) in rest.iter().zip(&g.logits[half..]).enumerate() {
            let error = max_abs_error(ours, reference);
            assert!(
                error <= TOLERANCE,
                "{road:?}, position {}: {error:e}",
                half + position
            );
        }
    }
}
