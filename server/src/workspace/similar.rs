//! Similar code: every file cut into overlapping windows of lines, each window a set of word
//! tokens; a query finds the windows with the highest Jaccard similarity through an inverted
//! index, so a lookup costs the postings of the query's tokens, not a pass over the workspace.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::ops::Range;

/// Lines per window, and the step between window starts.
pub const WINDOW_LINES: usize = 12;
const WINDOW_STEP: usize = 6;
/// Tokens found in more windows than this fraction say nothing about similarity; they still
/// count in the exact score, but do not nominate candidates.
const COMMON_FRACTION: f64 = 0.05;
/// ...and, in large workspaces, tokens in more windows than this.
const COMMON_POSTINGS: usize = 2_000;
/// Candidates scored exactly per query.
const CANDIDATES: usize = 256;

/// A window of one file.
#[derive(Debug, Clone)]
struct Window {
    file: u32,
    lines: Range<usize>,
    tokens: Vec<u32>,
    live: bool,
}

/// One result: a file (as the caller's id), a line range and its similarity.
#[derive(Debug, Clone, PartialEq)]
pub struct Match {
    pub file: u32,
    pub lines: Range<usize>,
    pub score: f64,
}

#[derive(Default)]
pub struct SimilarIndex {
    windows: Vec<Window>,
    postings: HashMap<u32, Vec<u32>>,
    by_file: HashMap<u32, Vec<u32>>,
    live: usize,
}

impl SimilarIndex {
    /// Adds the windows of `text` under the caller's file id (replacing any it had).
    pub fn insert(&mut self, file: u32, text: &str) {
        self.remove(file);
        let lines: Vec<&str> = text.lines().collect();
        let mut ids = Vec::new();
        let mut start = 0;
        loop {
            let end = (start + WINDOW_LINES).min(lines.len());
            let tokens = token_set(lines[start..end].iter().copied());
            if !tokens.is_empty() {
                let id = self.windows.len() as u32;
                for token in &tokens {
                    self.postings.entry(*token).or_default().push(id);
                }
                self.windows.push(Window {
                    file,
                    lines: start..end,
                    tokens,
                    live: true,
                });
                ids.push(id);
                self.live += 1;
            }
            if end >= lines.len() {
                break;
            }
            start += WINDOW_STEP;
        }
        self.by_file.insert(file, ids);
    }

    /// Forgets a file's windows. Their slots are reclaimed when most of the index is dead.
    pub fn remove(&mut self, file: u32) {
        let Some(ids) = self.by_file.remove(&file) else {
            return;
        };
        for id in ids {
            self.windows[id as usize].live = false;
            self.live -= 1;
        }
        if self.windows.len() > 1024 && self.live * 2 < self.windows.len() {
            self.compact();
        }
    }

    fn compact(&mut self) {
        let old = std::mem::take(&mut self.windows);
        self.postings.clear();
        self.by_file.clear();
        self.live = 0;
        for window in old.into_iter().filter(|w| w.live) {
            let id = self.windows.len() as u32;
            for token in &window.tokens {
                self.postings.entry(*token).or_default().push(id);
            }
            self.by_file.entry(window.file).or_default().push(id);
            self.windows.push(window);
            self.live += 1;
        }
    }

    /// The `limit` windows most similar to `query`, best first, at least `min_score`, from files
    /// other than `exclude`, at most one window per overlapping stretch of a file.
    pub fn query(
        &self,
        query: &str,
        exclude: Option<u32>,
        limit: usize,
        min_score: f64,
    ) -> Vec<Match> {
        let query_tokens = token_set(query.lines());
        if query_tokens.is_empty() || self.live == 0 {
            return Vec::new();
        }
        let common = ((self.live as f64 * COMMON_FRACTION) as usize).clamp(8, COMMON_POSTINGS);
        let mut hits: HashMap<u32, u32> = HashMap::new();
        for token in &query_tokens {
            let Some(posting) = self.postings.get(token) else {
                continue;
            };
            if posting.len() > common {
                continue;
            }
            for &id in posting {
                let window = &self.windows[id as usize];
                if window.live && Some(window.file) != exclude {
                    *hits.entry(id).or_default() += 1;
                }
            }
        }
        let mut candidates: Vec<(u32, u32)> = hits.into_iter().collect();
        candidates.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        candidates.truncate(CANDIDATES);
        let mut scored: Vec<Match> = candidates
            .into_iter()
            .map(|(id, _)| {
                let window = &self.windows[id as usize];
                Match {
                    file: window.file,
                    lines: window.lines.clone(),
                    score: jaccard(&query_tokens, &window.tokens),
                }
            })
            .filter(|m| m.score >= min_score)
            .collect();
        scored.sort_by(|a, b| {
            b.score
                .total_cmp(&a.score)
                .then(a.file.cmp(&b.file))
                .then(a.lines.start.cmp(&b.lines.start))
        });
        let mut chosen: Vec<Match> = Vec::new();
        for candidate in scored {
            let overlaps = chosen.iter().any(|c| {
                c.file == candidate.file
                    && c.lines.start < candidate.lines.end
                    && candidate.lines.start < c.lines.end
            });
            if !overlaps {
                chosen.push(candidate);
                if chosen.len() == limit {
                    break;
                }
            }
        }
        chosen
    }
}

/// The distinct word tokens of some lines, hashed, sorted.
pub fn token_set<'a>(lines: impl Iterator<Item = &'a str>) -> Vec<u32> {
    let mut tokens = Vec::new();
    for line in lines {
        for word in line.split(|c: char| !(c.is_alphanumeric() || c == '_')) {
            if word.len() >= 2 && !word.bytes().all(|b| b.is_ascii_digit()) {
                tokens.push(hash_word(word));
            }
        }
    }
    tokens.sort_unstable();
    tokens.dedup();
    tokens
}

fn hash_word(word: &str) -> u32 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    word.hash(&mut hasher);
    hasher.finish() as u32
}

/// |a ∩ b| / |a ∪ b| of two sorted sets.
fn jaccard(a: &[u32], b: &[u32]) -> f64 {
    let (mut i, mut j, mut both) = (0, 0, 0usize);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                both += 1;
                i += 1;
                j += 1;
            }
        }
    }
    let union = a.len() + b.len() - both;
    if union == 0 {
        0.0
    } else {
        both as f64 / union as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_similar_window_wins_and_the_excluded_file_is_skipped() {
        let mut index = SimilarIndex::default();
        let unrelated: String = (0..40)
            .map(|i| format!("let unrelated_{i} = {i};\n"))
            .collect();
        let target = "fn parse_header(input: &str) -> Header {\n    let fields = input.split(':');\n    Header::from_fields(fields)\n}\n";
        index.insert(1, &format!("{unrelated}{target}{unrelated}"));
        index.insert(2, target);
        index.insert(3, &unrelated);
        let query = "let fields = line.split(':');\nHeader::from_fields(fields)";
        let found = index.query(query, Some(2), 3, 0.1);
        assert_eq!(found[0].file, 1, "{found:?}");
        assert!(
            found[0].lines.contains(&41),
            "the window around the target: {found:?}"
        );
        assert!(found.iter().all(|m| m.file != 2));
        index.remove(1);
        assert!(index.query(query, Some(2), 3, 0.1).is_empty());
    }

    #[test]
    fn jaccard_is_intersection_over_union() {
        assert_eq!(jaccard(&[1, 2, 3], &[2, 3, 4]), 0.5);
        assert_eq!(jaccard(&[], &[]), 0.0);
    }
}
