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
                    "the KV cache budget of {budget} pages is held by running requests"
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
