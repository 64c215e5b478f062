//! The prefix cache: a radix tree over token ids whose edges are pages of latents, so a new
//! prompt reuses the latents of the longest prefix any earlier sequence computed.
//!
//! Invariants:
//! - every node but the root owns exactly one page; a node at depth d (root = 0) covers positions
//!   `(d - 1) * page_tokens ..`, and its `tokens` are the ids at those positions: `page_tokens` of
//!   them for a full page, fewer for a partial page, which is always a leaf;
//! - the path from the root to a node spells a token prefix, and the pages along it hold exactly
//!   the latents of that prefix (latents depend on the whole prefix, so a page is only reachable
//!   under the prefix that produced it);
//! - siblings never hold equal `tokens`;
//! - a page is in use when something besides the tree holds it (`Arc::strong_count > 1`): a
//!   running sequence. Pages in use are never evicted; only leaves not in use are, least recently
//!   used first, and only when the pool needs room;
//! - matching is token-granular: full pages are shared as they are; when the match ends inside a
//!   page, that page is shared too and the sequence copies it before writing (copy on write).

use std::sync::Arc;

use crate::error::{EngineError, Result};
use crate::latent_cache::LatentCache;
use crate::page_pool::{Page, PagePool};

type NodeId = usize;
const ROOT: NodeId = 0;

pub struct RadixCache {
    pool: Arc<PagePool>,
    /// Arena of nodes; `None` marks a free slot (listed in `free`).
    nodes: Vec<Option<Node>>,
    free: Vec<NodeId>,
    /// Logical clock for least-recently-used eviction.
    clock: u64,
    evictions: usize,
}

struct Node {
    parent: NodeId,
    tokens: Vec<u32>,
    /// `None` only for the root.
    page: Option<Arc<Page>>,
    children: Vec<NodeId>,
    last_used: u64,
}

/// Counters for stats and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct CacheCounters {
    /// Pages allocated in the pool (tree and running sequences).
    pub pages_in_use: usize,
    pub budget_pages: Option<usize>,
    /// Nodes in the tree (each one page).
    pub tree_pages: usize,
    /// Pages evicted since the cache was made.
    pub evictions: usize,
    /// Latent rows copied from the host pages to the compute device (a GPU) so far, over all
    /// layers: pages already there (a shared prefix) cost none.
    pub rows_copied_to_device: usize,
}

impl RadixCache {
    pub fn new(pool: Arc<PagePool>) -> Self {
        let root = Node {
            parent: ROOT,
            tokens: Vec::new(),
            page: None,
            children: Vec::new(),
            last_used: 0,
        };
        Self {
            pool,
            nodes: vec![Some(root)],
            free: Vec::new(),
            clock: 0,
            evictions: 0,
        }
    }

    pub fn pool(&self) -> &Arc<PagePool> {
        &self.pool
    }

    pub fn counters(&self) -> CacheCounters {
        CacheCounters {
            pages_in_use: self.pool.live_pages(),
            budget_pages: self.pool.budget_pages(),
            tree_pages: self.nodes.len() - self.free.len() - 1,
            evictions: self.evictions,
            rows_copied_to_device: self.pool.rows_copied_to_device(),
        }
    }

    fn node(&self, id: NodeId) -> &Node {
        self.nodes[id].as_ref().expect("live node id")
    }

    fn node_mut(&mut self, id: NodeId) -> &mut Node {
        self.nodes[id].as_mut().expect("live node id")
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// A sequence holding the cached latents of the longest prefix of `tokens` the tree knows, at
    /// most `limit` tokens long. The sequence shares the tree's pages.
    pub fn match_prefix(&mut self, tokens: &[u32], limit: usize) -> LatentCache {
        let page_tokens = self.pool.layout().page_tokens;
        let tokens = &tokens[..limit.min(tokens.len())];
        let now = self.tick();
        let mut pages = Vec::new();
        let mut node = ROOT;
        let mut matched = 0;
        loop {
            let rest = &tokens[matched..];
            // The child sharing the most tokens with what is left; a full page shared whole wins.
            let best = self
                .node(node)
                .children
                .iter()
                .map(|&child| (child, common_prefix(&self.node(child).tokens, rest)))
                .max_by_key(|&(child, shared)| {
                    (shared, self.node(child).tokens.len() == page_tokens)
                });
            let Some((child, shared)) = best.filter(|&(_, shared)| shared > 0) else {
                break;
            };
            self.node_mut(child).last_used = now;
            pages.push(
                self.node(child)
                    .page
                    .clone()
                    .expect("non-root nodes own a page"),
            );
            matched += shared;
            if shared < page_tokens {
                break;
            }
            node = child;
        }
        LatentCache::from_pages(self.pool.clone(), pages, matched)
    }

    /// Makes sure `pages` more can be allocated, evicting least recently used leaves that no
    /// sequence is using. Fails when even that is not enough.
    pub fn make_room(&mut self, pages: usize) -> Result<()> {
        let Some(budget) = self.pool.budget_pages() else {
            return Ok(());
        };
        if pages > budget {
            return Err(EngineError::CacheFull(format!(
                "this request needs {pages} pages of KV cache but the budget is {budget} ({} MiB); \
                 raise the cache budget or shorten the prompt",
                (budget * self.pool.layout().page_bytes()) >> 20
            )));
        }
        while self.pool.free_pages().unwrap_or(usize::MAX) < pages {
            let Some(victim) = self.least_recently_used_evictable_leaf() else {
                return Err(EngineError::CacheFull(format!(
                    "the KV cache is full: all {budget} pages ({} MiB) are held by running requests; \
                     raise the cache budget",
                    (budget * self.pool.layout().page_bytes()) >> 20
                )));
            };
            self.remove_leaf(victim);
            self.evictions += 1;
        }
        Ok(())
    }

    fn least_recently_used_evictable_leaf(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .enumerate()
            .skip(1)
            .filter_map(|(id, node)| node.as_ref().map(|n| (id, n)))
            .filter(|(_, n)| {
                n.children.is_empty() && n.page.as_ref().is_some_and(|p| Arc::strong_count(p) == 1)
            })
            .min_by_key(|(_, n)| n.last_used)
            .map(|(id, _)| id)
    }

    fn remove_leaf(&mut self, id: NodeId) {
        let node = self.nodes[id].take().expect("live node id");
        debug_assert!(node.children.is_empty());
        self.node_mut(node.parent).children.retain(|&c| c != id);
        self.free.push(id);
    }

    fn add_child(&mut self, parent: NodeId, tokens: Vec<u32>, page: Arc<Page>, now: u64) -> NodeId {
        let node = Node {
            parent,
            tokens,
            page: Some(page),
            children: Vec::new(),
            last_used: now,
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.nodes[id] = Some(node);
                id
            }
            None => {
                self.nodes.push(Some(node));
                self.nodes.len() - 1
            }
        };
        self.node_mut(parent).children.push(id);
        id
    }

    /// Adds the latents of `sequence` (whose first `sequence.len()` positions hold `tokens`) to
    /// the tree, sharing its pages; pages the tree already has for the same prefix are kept and
    /// the sequence's copies dropped.
    pub fn insert(&mut self, tokens: &[u32], sequence: LatentCache) {
        let page_tokens = self.pool.layout().page_tokens;
        let len = sequence.len().min(tokens.len());
        let pages = sequence.into_pages();
        let now = self.tick();
        let mut node = ROOT;
        for (index, page) in pages.into_iter().enumerate() {
            let start = index * page_tokens;
            if start >= len {
                break;
            }
            let chunk = &tokens[start..(start + page_tokens).min(len)];
            // A child with these tokens (or, for a partial chunk, beginning with them) already
            // holds these latents: keep it and let the sequence's copy go.
            let partial = chunk.len() < page_tokens;
            let existing = self.node(node).children.iter().copied().find(|&c| {
                let held = &self.node(c).tokens;
                held == chunk || (partial && held.starts_with(chunk))
            });
            let child = match existing {
                Some(child) => child,
                None => {
                    if partial {
                        self.drop_shorter_partials(node, chunk);
                    }
                    self.add_child(node, chunk.to_vec(), page, now)
                }
            };
            self.node_mut(child).last_used = now;
            if partial {
                break;
            }
            node = child;
        }
    }

    /// A partial leaf whose tokens begin `chunk` is made redundant by `chunk`'s page: drop it
    /// unless a sequence still uses it.
    fn drop_shorter_partials(&mut self, parent: NodeId, chunk: &[u32]) {
        let redundant: Vec<NodeId> = self
            .node(parent)
            .children
            .iter()
            .copied()
            .filter(|&c| {
                let n = self.node(c);
                n.children.is_empty()
                    && n.tokens.len() < chunk.len()
                    && chunk.starts_with(&n.tokens)
                    && n.page.as_ref().is_some_and(|p| Arc::strong_count(p) == 1)
            })
            .collect();
        for id in redundant {
            self.remove_leaf(id);
        }
    }
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    //! Random workloads against a naive model. Pages hold, for each position, a fingerprint of
    //! the whole prefix up to it, so a page reachable under the wrong prefix, overwritten while
    //! shared, or evicted while in use shows up as a wrong fingerprint.

    use super::*;
    use crate::page_pool::PageLayout;

    const PAGE: usize = 4;

    fn layout() -> PageLayout {
        PageLayout {
            page_tokens: PAGE,
            layers: 2,
            kv_lora: 2,
            rope: 1,
        }
    }

    /// The value a position's row holds in layer `layer`, element `k`: a hash of the prefix.
    fn fingerprint(prefix: &[u32], layer: usize, k: usize) -> f32 {
        let hash = prefix.iter().fold(1469598103934665603u64, |h, &t| {
            (h ^ t as u64).wrapping_mul(1099511628211)
        });
        ((hash ^ (layer * 31 + k) as u64) % 1_000_003) as f32
    }

    /// What a forward pass would do: checks the cached rows, then computes the rest.
    fn compute(cache: &mut RadixCache, tokens: &[u32]) -> Result<LatentCache> {
        let mut sequence = cache.match_prefix(tokens, tokens.len());
        verify(&sequence, tokens);
        let start = sequence.len();
        cache.make_room(sequence.pages_needed(tokens.len() - start))?;
        sequence.reserve(tokens.len() - start)?;
        for layer in 0..layout().layers {
            let rows: Vec<f32> = (start..tokens.len())
                .flat_map(|p| (0..layout().row()).map(move |k| (p, k)))
                .map(|(p, k)| fingerprint(&tokens[..=p], layer, k))
                .collect();
            sequence.write(layer, start, &rows);
        }
        sequence.set_len(tokens.len());
        Ok(sequence)
    }

    fn verify(sequence: &LatentCache, tokens: &[u32]) {
        for layer in 0..layout().layers {
            let pages = sequence.layer_pages(layer);
            for p in 0..sequence.len() {
                for k in 0..layout().row() {
                    let value = pages[p / PAGE][(p % PAGE) * layout().row() + k];
                    assert_eq!(
                        value,
                        fingerprint(&tokens[..=p], layer, k),
                        "position {p} of {tokens:?}"
                    );
                }
            }
        }
    }

    /// Walks the tree checking the stated invariants.
    fn check_tree(cache: &RadixCache) {
        fn walk(cache: &RadixCache, id: NodeId, prefix: &mut Vec<u32>) {
            let node = cache.node(id);
            let mut seen: Vec<&Vec<u32>> = Vec::new();
            for &child in &node.children {
                let c = cache.node(child);
                assert_eq!(c.parent, id);
                assert!(!c.tokens.is_empty() && c.tokens.len() <= PAGE);
                assert!(
                    c.tokens.len() == PAGE || c.children.is_empty(),
                    "a partial page is a leaf"
                );
                assert!(!seen.contains(&&c.tokens), "siblings differ");
                seen.push(&c.tokens);
                let start = prefix.len();
                prefix.extend(&c.tokens);
                let page = c.page.as_ref().unwrap();
                for layer in 0..layout().layers {
                    for i in 0..c.tokens.len() {
                        for k in 0..layout().row() {
                            let value = page.layer(layer)[i * layout().row() + k];
                            assert_eq!(value, fingerprint(&prefix[..=start + i], layer, k));
                        }
                    }
                }
                walk(cache, child, prefix);
                prefix.truncate(start);
            }
        }
        walk(cache, ROOT, &mut Vec::new());
    }

    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
    }

    /// A new request: usually an earlier one cut somewhere and continued differently.
    fn next_tokens(rng: &mut Rng, history: &[Vec<u32>]) -> Vec<u32> {
        let mut tokens = match history.len() {
            0 => Vec::new(),
            n => {
                let base = &history[rng.below(n)];
                base[..rng.below(base.len() + 1)].to_vec()
            }
        };
        for _ in 0..1 + rng.below(12) {
            tokens.push(rng.below(3) as u32);
        }
        tokens.truncate(40);
        tokens
    }

    fn naive_longest_match(history: &[Vec<u32>], tokens: &[u32]) -> usize {
        history
            .iter()
            .map(|h| common_prefix(h, tokens))
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn without_eviction_matches_are_exactly_the_longest_inserted_prefix() {
        for seed in 1..=20 {
            let mut rng = Rng(seed);
            let mut cache = RadixCache::new(PagePool::new(layout(), None));
            let mut history: Vec<Vec<u32>> = Vec::new();
            for _ in 0..200 {
                let tokens = next_tokens(&mut rng, &history);
                let expected = naive_longest_match(&history, &tokens);
                let sequence = cache.match_prefix(&tokens, tokens.len());
                assert_eq!(sequence.len(), expected, "seed {seed}: {tokens:?}");
                drop(sequence);
                let sequence = compute(&mut cache, &tokens).unwrap();
                cache.insert(&tokens, sequence);
                history.push(tokens);
                check_tree(&cache);
                assert_eq!(
                    cache.pool.live_pages(),
                    cache.counters().tree_pages,
                    "idle pages all in the tree"
                );
            }
        }
    }

    #[test]
    fn under_a_small_budget_pages_in_use_survive_and_the_budget_holds() {
        let budget_pages = 40;
        for seed in 1..=20 {
            let mut rng = Rng(seed * 7919);
            let pool = PagePool::new(layout(), Some(budget_pages * layout().page_bytes()));
            let mut cache = RadixCache::new(pool);
            let mut history: Vec<Vec<u32>> = Vec::new();
            // Up to two sequences stay in flight while others run.
            let mut in_flight: Vec<(Vec<u32>, LatentCache)> = Vec::new();
            for step in 0..400 {
                if in_flight.len() == 2 || (!in_flight.is_empty() && rng.below(3) == 0) {
                    let (tokens, sequence) = in_flight.remove(rng.below(in_flight.len()));
                    verify(&sequence, &tokens);
                    cache.insert(&tokens, sequence);
                }
                let tokens = next_tokens(&mut rng, &history);
                let bound = naive_longest_match(&history, &tokens);
                assert!(
                    cache.match_prefix(&tokens, tokens.len()).len() <= bound,
                    "never more than was inserted"
                );
                let sequence = compute(&mut cache, &tokens).unwrap_or_else(|e| {
                    panic!("seed {seed} step {step}: two sequences fit the budget: {e}")
                });
                assert!(cache.pool.live_pages() <= budget_pages, "budget exceeded");
                for (held_tokens, held) in &in_flight {
                    verify(held, held_tokens);
                }
                history.push(tokens.clone());
                if rng.below(2) == 0 {
                    in_flight.push((tokens, sequence));
                } else {
                    cache.insert(&tokens, sequence);
                }
                check_tree(&cache);
            }
            assert!(
                cache.counters().evictions > 0,
                "seed {seed}: the workload must exceed the budget"
            );
        }
    }

    #[test]
    fn a_request_larger_than_the_budget_is_refused_clearly() {
        let mut cache = RadixCache::new(PagePool::new(layout(), Some(3 * layout().page_bytes())));
        let tokens: Vec<u32> = (0..20).collect();
        let error = compute(&mut cache, &tokens).err().unwrap().to_string();
        assert!(
            error.contains("needs 5 pages of KV cache but the budget is 3"),
            "{error}"
        );
    }

    #[test]
    fn a_match_ending_inside_a_page_shares_it_and_writing_copies_it() {
        let mut cache = RadixCache::new(PagePool::new(layout(), None));
        let first = vec![1, 2, 3, 4, 5, 6, 7];
        let sequence = compute(&mut cache, &first).unwrap();
        cache.insert(&first, sequence);
        // Shares the full page [1,2,3,4] and 2 tokens of the partial page [5,6,7].
        let second = vec![1, 2, 3, 4, 5, 6, 9, 9];
        let shared = cache.match_prefix(&second, second.len());
        assert_eq!(shared.len(), 6);
        drop(shared);
        let sequence = compute(&mut cache, &second).unwrap();
        verify(&sequence, &second);
        cache.insert(&second, sequence);
        check_tree(&cache);
        // The first sequence's pages are intact.
        let again = cache.match_prefix(&first, first.len());
        assert_eq!(again.len(), 7);
        verify(&again, &first);
    }
}
