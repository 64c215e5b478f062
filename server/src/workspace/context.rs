//! The context builder: for a cursor and a token budget, the blocks of workspace context and the
//! window of the file that make up a fill-in-the-middle prompt.
//!
//! What goes in, by priority: definitions of the identifiers used around the cursor and of the
//! names the file imports (resolved across files), the outline of the current file when the
//! prefix does not show all of it, the outlines of imported modules, similar code windows from
//! other files, recently edited chunks of other open files. Every block is headed by its path as
//! a comment and counted in exact tokens; the whole prompt never exceeds the budget.
//!
//! Laid out for the prefix cache: blocks in an order fixed by their kind and path (never by
//! score), then the file prefix from an anchored line, then the suffix. The choice of blocks and
//! the prefix start depend only on the text outside the cursor line, and are remembered for it:
//! typing on a line never changes a byte before that line.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::ops::Range;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tree_sitter::Tree;

use super::index::{FileId, IndexedFile, WorkspaceIndex};
use super::languages::Compiled;
use super::symbols::{self, Definition, FileSymbols};
use super::tokens::{CountCache, TokenCounter};

/// The prefix may start only at multiples of this many lines, so it holds still while typing.
pub const ANCHOR_LINES: usize = 64;
/// Share of the budget the suffix may take at most.
const SUFFIX_SHARE: usize = 8;
/// Lines before the cursor whose identifiers count as "used near the cursor" at top level.
const NEARBY_LINES: usize = 40;
/// Lines before the cursor that make the similar-code query.
const SIMILAR_QUERY_LINES: usize = 12;
const SIMILAR_LIMIT: usize = 4;
const SIMILAR_MIN_SCORE: f64 = 0.2;
/// A name with more definitions than this is too ambiguous to follow outside imported files.
const AMBIGUOUS: usize = 4;
/// Lines an outline of a module may take.
const OUTLINE_LINES: usize = 60;
/// Head choices remembered (one per recently edited line, roughly).
const HEADS_REMEMBERED: usize = 32;

/// What kind of context a block is, in prompt order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockKind {
    /// Definitions of names the file imports.
    Import,
    /// The outline of a module the file imports.
    Module,
    /// The current file's outline, where the prefix does not show it.
    Outline,
    /// Definitions of identifiers used near the cursor.
    Definition,
    /// Code similar to the lines before the cursor.
    Similar,
    /// Recently edited or visited code of another open file.
    Recent,
}

/// A chunk of another open document the user recently edited or looked at.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RecentChunk {
    pub relative: String,
    pub language: Option<&'static str>,
    pub lines: Range<usize>,
    pub text: String,
}

/// A block of the prompt, as `deepseek-lsp context --json` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Block {
    pub path: String,
    pub kind: BlockKind,
    pub reason: String,
    pub tokens: usize,
    #[serde(skip)]
    pub text: String,
}

/// The current document and where the cursor is.
pub struct Cursor<'a> {
    /// The document's text.
    pub text: &'a str,
    /// Byte offset of the cursor.
    pub offset: usize,
    /// Its path relative to the workspace (what headers show), when it has one.
    pub relative: Option<&'a str>,
    pub language: Option<&'static Compiled>,
    /// Where the document's syntax tree comes from; asked only when the choice of blocks must be
    /// made again (not on every keystroke).
    pub tree: TreeSource<'a>,
    /// When the cursor line holds only indentation before the cursor, end the prefix at the
    /// line's start and let the model write the indentation (see `indent_healing`); when the
    /// line is blank after the cursor too, the suffix starts at the next line.
    pub heal_indentation: bool,
}

/// How the builder gets the current document's syntax tree.
#[derive(Clone, Copy)]
pub enum TreeSource<'a> {
    /// Parse the text here.
    Parse,
    /// This tree, current for the text.
    Parsed(&'a Tree),
    /// Ask for it (a server keeps trees current lazily).
    Lazy(&'a dyn Fn() -> Option<Tree>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Budget {
    /// Tokens the whole prompt may have, special tokens included.
    pub tokens: usize,
    /// Lines after the cursor line the suffix may show.
    pub suffix_lines: usize,
}

/// A built prompt context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltContext {
    pub blocks: Vec<Block>,
    /// The file from `prefix_start_line` to the cursor, headed by its path.
    pub prefix: String,
    /// From the cursor to the end of the suffix window.
    pub suffix: String,
    pub prefix_start_line: usize,
    pub suffix_end_line: usize,
    pub prefix_tokens: usize,
    pub suffix_tokens: usize,
    /// All of it: blocks, prefix, suffix and the format's special tokens.
    pub prompt_tokens: usize,
    /// The indentation before the cursor that the prefix leaves out (empty unless healing):
    /// the model writes its own, and this much comes off its first line.
    pub cut_indentation: String,
}

impl BuiltContext {
    /// The blocks as the engine's prompt parts, named by path.
    pub fn prompt_blocks(&self) -> Vec<engine::ContextBlock> {
        self.blocks
            .iter()
            .map(|b| engine::ContextBlock {
                name: b.path.clone(),
                text: b.text.clone(),
            })
            .collect()
    }

    /// The fill-in-the-middle prompt: `prompt_tokens` is its exact length.
    pub fn fill_in_middle_prompt(&self) -> engine::Prompt {
        engine::Prompt::fill_in_middle(&self.prompt_blocks(), &self.prefix, &self.suffix)
    }

    /// The prompt's text as a reader sees it (special tokens left out).
    pub fn text(&self) -> String {
        let mut text: String = self.blocks.iter().map(|b| b.text.as_str()).collect();
        text.push_str(&self.prefix);
        text.push_str(&self.suffix);
        text
    }
}

/// The choices that depend only on text outside the cursor line.
#[derive(Clone)]
struct Head {
    blocks: Vec<Block>,
    prefix_start_line: usize,
    suffix_end_line: usize,
    /// Whether the prefix starts with the file's path header (dropped only for tiny budgets).
    header: bool,
    /// For budgets too small for whole lines: the prefix starts at this byte of the cursor
    /// line, and the suffix ends at this byte of it.
    prefix_from: Option<usize>,
    suffix_to: Option<usize>,
}

/// Builds contexts; remembers counts and head choices across calls.
pub struct ContextBuilder {
    counter: Box<dyn TokenCounter>,
    counts: Mutex<HashMap<u64, usize>>,
    heads: Mutex<Vec<(u64, Head)>>,
}

/// A candidate piece of a block.
#[derive(Debug, Clone)]
struct Snippet {
    kind: BlockKind,
    path: String,
    comment: &'static str,
    lines: Range<usize>,
    text: String,
    reason: String,
    score: f64,
}

impl ContextBuilder {
    pub fn new(counter: Box<dyn TokenCounter>) -> Self {
        Self {
            counter,
            counts: Mutex::new(HashMap::new()),
            heads: Mutex::new(Vec::new()),
        }
    }

    /// Exact tokens of a text encoded as one prompt part.
    pub fn count(&self, text: &str) -> usize {
        CountCache::new(self.counter.as_ref(), &self.counts).text(text)
    }

    /// The context for `cursor` within `budget`, from `index` (when there is one) and the
    /// recently edited chunks of other documents.
    pub fn build(
        &self,
        index: Option<&WorkspaceIndex>,
        cursor: &Cursor,
        budget: Budget,
        recent: &[RecentChunk],
    ) -> BuiltContext {
        let counts = CountCache::new(self.counter.as_ref(), &self.counts);
        let layout = Layout::new(cursor);
        let key = head_key(
            cursor,
            &layout,
            budget,
            index.map(|i| i.generation()),
            recent,
        );
        let cursor_line_tokens = counts.text(layout.cursor_line(cursor.text));
        let remembered = self
            .heads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, head)| head.clone());
        // Typing on the line keeps the head while the prompt still fits.
        if let Some(head) = remembered {
            let built = assemble(&counts, cursor, &layout, &head);
            if built.prompt_tokens <= budget.tokens {
                return built;
            }
        }
        let head = choose_head(
            &counts,
            index,
            cursor,
            &layout,
            budget,
            recent,
            cursor_line_tokens,
        );
        let built = assemble(&counts, cursor, &layout, &head);
        let mut heads = self.heads.lock().unwrap_or_else(|e| e.into_inner());
        heads.retain(|(k, _)| *k != key);
        heads.push((key, head));
        if heads.len() > HEADS_REMEMBERED {
            heads.remove(0);
        }
        built
    }
}

/// Where the lines of the current document are.
struct Layout {
    /// Byte offset where each line starts, plus the text length at the end.
    line_starts: Vec<usize>,
    cursor_line: usize,
}

impl Layout {
    fn new(cursor: &Cursor) -> Self {
        let text = cursor.text;
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        if *line_starts.last().unwrap_or(&0) != text.len() {
            line_starts.push(text.len());
        }
        let cursor_line = match line_starts.binary_search(&cursor.offset) {
            Ok(i) => i,
            Err(i) => i - 1,
        }
        .min(line_starts.len().saturating_sub(2));
        Self {
            line_starts,
            cursor_line,
        }
    }

    /// Lines in the document (a last line without a break counts).
    fn line_count(&self) -> usize {
        self.line_starts.len() - 1
    }

    fn line<'t>(&self, text: &'t str, line: usize) -> &'t str {
        &text[self.line_starts[line]..self.line_starts[line + 1]]
    }

    fn lines<'t>(&self, text: &'t str, lines: Range<usize>) -> &'t str {
        &text[self.line_starts[lines.start]..self.line_starts[lines.end]]
    }

    fn cursor_line<'t>(&self, text: &'t str) -> &'t str {
        if self.line_count() == 0 {
            return "";
        }
        self.line(text, self.cursor_line)
    }

    fn cursor_line_start(&self) -> usize {
        self.line_starts[self.cursor_line]
    }

    fn cursor_line_end(&self) -> usize {
        self.line_starts
            .get(self.cursor_line + 1)
            .copied()
            .unwrap_or(*self.line_starts.last().unwrap_or(&0))
    }
}

/// Everything a head choice depends on: the text outside the cursor line, the cursor line's
/// number, the budget, the index's state and the recent chunks.
fn head_key(
    cursor: &Cursor,
    layout: &Layout,
    budget: Budget,
    generation: Option<u64>,
    recent: &[RecentChunk],
) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    cursor.text[..layout.cursor_line_start()].hash(&mut hasher);
    cursor.text[layout.cursor_line_end().min(cursor.text.len())..].hash(&mut hasher);
    layout.cursor_line.hash(&mut hasher);
    cursor.relative.hash(&mut hasher);
    budget.hash(&mut hasher);
    generation.hash(&mut hasher);
    recent.hash(&mut hasher);
    hasher.finish()
}

fn comment_of(cursor: &Cursor) -> &'static str {
    cursor.language.map_or("//", |l| l.spec.line_comment)
}

/// The prefix text: the path header and the lines from the head's start to the cursor.
fn prefix_text(cursor: &Cursor, layout: &Layout, head: &Head) -> String {
    let mut prefix = String::new();
    if head.header
        && let Some(relative) = cursor.relative
    {
        prefix.push_str(&header(comment_of(cursor), relative));
    }
    let start = head
        .prefix_from
        .unwrap_or(layout.line_starts[head.prefix_start_line]);
    prefix.push_str(&cursor.text[start.min(cursor.offset)..cursor.offset]);
    prefix
}

/// The indentation the prefix leaves out for the model to write: the cursor line's text before
/// the cursor when it is only spaces and tabs (and healing is on).
fn cut_indentation<'a>(cursor: &Cursor<'a>, layout: &Layout) -> &'a str {
    let before = &cursor.text[layout.cursor_line_start().min(cursor.offset)..cursor.offset];
    if cursor.heal_indentation && before.chars().all(|c| c == ' ' || c == '\t') {
        before
    } else {
        ""
    }
}

fn assemble(counts: &CountCache, cursor: &Cursor, layout: &Layout, head: &Head) -> BuiltContext {
    let mut prefix = prefix_text(cursor, layout, head);
    let cut = Some(cut_indentation(cursor, layout))
        .filter(|cut| prefix.ends_with(cut))
        .unwrap_or_default();
    prefix.truncate(prefix.len() - cut.len());
    let suffix_end = head
        .suffix_to
        .unwrap_or(layout.line_starts[head.suffix_end_line.min(layout.line_count())]);
    // A blank cursor line being healed is left out of the suffix too: the model then fills
    // whole lines between prefix and suffix, the shape fill-in-the-middle training gives most.
    let rest_of_line = &cursor.text[cursor.offset..layout.cursor_line_end().max(cursor.offset)];
    let suffix_start = if !cut.is_empty() && rest_of_line.trim().is_empty() {
        layout.cursor_line_end().max(cursor.offset)
    } else {
        cursor.offset
    };
    let suffix_end = suffix_end.max(suffix_start);
    let suffix = cursor.text[suffix_start..suffix_end].to_string();
    let prefix_tokens = counts.text(&prefix);
    let suffix_tokens = counts.text(&suffix);
    let blocks_tokens: usize = head.blocks.iter().map(|b| b.tokens).sum();
    BuiltContext {
        blocks: head.blocks.clone(),
        prefix,
        suffix,
        prefix_start_line: head.prefix_start_line,
        suffix_end_line: head.suffix_end_line,
        prefix_tokens,
        suffix_tokens,
        prompt_tokens: counts.fixed_tokens() + blocks_tokens + prefix_tokens + suffix_tokens,
        cut_indentation: cut.to_string(),
    }
}

fn choose_head(
    counts: &CountCache,
    index: Option<&WorkspaceIndex>,
    cursor: &Cursor,
    layout: &Layout,
    budget: Budget,
    recent: &[RecentChunk],
    cursor_line_tokens: usize,
) -> Head {
    let cursor_line = layout.cursor_line;
    // Room for the cursor line to grow while this choice is reused (a share of small budgets).
    let cursor_line_reserve = cursor_line_tokens + (budget.tokens / 8).min(GROWTH_ROOM);
    let header_tokens = cursor
        .relative
        .map_or(0, |r| counts.text(&header(comment_of(cursor), r)));
    let mut available = budget
        .tokens
        .saturating_sub(counts.fixed_tokens() + cursor_line_reserve + header_tokens);

    // The suffix: whole lines after the cursor line, at most a share of the budget.
    let suffix_cap = (budget.tokens / SUFFIX_SHARE).min(available);
    let mut suffix_end_line = (cursor_line + 1).min(layout.line_count());
    let mut suffix_tokens = 0;
    while suffix_end_line < layout.line_count()
        && suffix_end_line <= cursor_line + budget.suffix_lines
    {
        let cost = counts.line(layout.line(cursor.text, suffix_end_line));
        if suffix_tokens + cost > suffix_cap {
            break;
        }
        suffix_tokens += cost;
        suffix_end_line += 1;
    }
    available = available.saturating_sub(suffix_tokens);

    // The cost of each line before the cursor line.
    let line_costs: Vec<usize> = (0..cursor_line)
        .map(|l| counts.line(layout.line(cursor.text, l)))
        .collect();
    let whole_prefix: usize = line_costs.iter().sum();
    // Blocks may take what the prefix leaves of the budget, but the prefix keeps at least half.
    let prefix_floor = whole_prefix.min(available / 2);
    let mut prefix_start_line = start_within(&line_costs, prefix_floor);

    let analysis = Analysis::of(index, cursor, layout);
    let candidates = index.map_or_else(Vec::new, |index| {
        candidates(index, cursor, layout, &analysis, recent)
    });
    let mut snippets = candidates;
    if prefix_start_line > 0 || suffix_end_line < layout.line_count() {
        snippets.extend(outline_of_current(
            cursor,
            &analysis,
            prefix_start_line,
            suffix_end_line,
        ));
    }
    let blocks_budget = available.saturating_sub(prefix_floor);
    let blocks = select(counts, snippets, blocks_budget);
    let blocks_tokens: usize = blocks.iter().map(|b| b.tokens).sum();

    // The prefix takes what the blocks left.
    let prefix_budget = available.saturating_sub(blocks_tokens);
    prefix_start_line = start_within(&line_costs, prefix_budget);
    let mut head = Head {
        blocks,
        prefix_start_line,
        suffix_end_line,
        header: true,
        prefix_from: None,
        suffix_to: None,
    };
    // Exact check: counts of whole parts may differ from sums of lines for tokenizers that
    // merge across line breaks. First keep the growth room by giving back blocks, then prefix
    // lines; then, for tiny budgets, fit strictly: suffix lines, the header, and the cursor
    // line's own text from its ends.
    let growth_room = cursor_line_reserve - cursor_line_tokens;
    loop {
        let total = assemble(counts, cursor, layout, &head).prompt_tokens;
        if total + growth_room <= budget.tokens {
            break;
        }
        if head.blocks.pop().is_some() {
            continue;
        }
        if head.prefix_start_line < cursor_line {
            head.prefix_start_line = anchor_after(head.prefix_start_line, cursor_line);
            continue;
        }
        if total <= budget.tokens {
            break;
        }
        if head.suffix_end_line > cursor_line + 1 {
            head.suffix_end_line -= 1;
        } else if head.header && cursor.relative.is_some() {
            head.header = false;
        } else if let Some(end) = shorter_suffix(cursor, layout, &head) {
            head.suffix_to = Some(end);
        } else if let Some(start) = shorter_prefix(cursor, layout, &head) {
            head.prefix_from = Some(start);
        } else {
            break;
        }
    }
    head
}

/// Tokens of growth room kept for the cursor line.
const GROWTH_ROOM: usize = 64;

/// The next line after `line` a prefix may start at: an anchor, or the cursor line.
fn anchor_after(line: usize, cursor_line: usize) -> usize {
    let anchor = (line + 1).next_multiple_of(ANCHOR_LINES);
    if anchor < cursor_line {
        anchor
    } else {
        line + 1
    }
}

/// The suffix cut a few characters shorter within the cursor line.
fn shorter_suffix(cursor: &Cursor, layout: &Layout, head: &Head) -> Option<usize> {
    let end = head
        .suffix_to
        .unwrap_or(layout.cursor_line_end())
        .min(cursor.text.len());
    (end > cursor.offset)
        .then(|| floor_char_boundary(cursor.text, end.saturating_sub(8).max(cursor.offset)))
}

/// The prefix started a few characters later within the cursor line.
fn shorter_prefix(cursor: &Cursor, layout: &Layout, head: &Head) -> Option<usize> {
    let start = head.prefix_from.unwrap_or(layout.cursor_line_start());
    (start < cursor.offset).then(|| ceil_char_boundary(cursor.text, (start + 8).min(cursor.offset)))
}

fn floor_char_boundary(text: &str, mut index: usize) -> usize {
    while !text.is_char_boundary(index) {
        index -= 1;
    }
    index
}

fn ceil_char_boundary(text: &str, mut index: usize) -> usize {
    while !text.is_char_boundary(index) {
        index += 1;
    }
    index
}

/// The earliest line from which the lines up to the cursor cost at most `budget`: an anchor
/// (a multiple of `ANCHOR_LINES`) when one fits, so the start holds still as lines are added;
/// in a file too short for that, the exact line.
fn start_within(line_costs: &[usize], budget: usize) -> usize {
    let mut start = line_costs.len();
    let mut total = 0;
    while start > 0 && total + line_costs[start - 1] <= budget {
        total += line_costs[start - 1];
        start -= 1;
    }
    let anchored = start.next_multiple_of(ANCHOR_LINES);
    if start == 0 || anchored >= line_costs.len() {
        start
    } else {
        anchored
    }
}

/// What the current document says around the cursor, the cursor line left out.
struct Analysis {
    /// The file's entry in the index: its definitions and imports as last saved, which hold
    /// still while the user types (and cost nothing to read).
    indexed: Option<Arc<IndexedFile>>,
    /// Read from the live text when the index does not have the file.
    own: FileSymbols,
    /// Identifiers used in the enclosing scope and the lines just before the cursor, nearest
    /// first, each once.
    nearby: Vec<String>,
}

impl Analysis {
    fn of(index: Option<&WorkspaceIndex>, cursor: &Cursor, layout: &Layout) -> Self {
        let indexed = index
            .zip(cursor.relative)
            .and_then(|(index, relative)| index.file_by_relative(relative).cloned());
        let mut analysis = Self {
            indexed,
            own: FileSymbols::default(),
            nearby: Vec::new(),
        };
        let Some(language) = cursor.language else {
            return analysis;
        };
        let owned;
        let tree = match cursor.tree {
            TreeSource::Parsed(tree) => tree,
            TreeSource::Parse => match symbols::parse(language, cursor.text, None) {
                Some(tree) => {
                    owned = tree;
                    &owned
                }
                None => return analysis,
            },
            TreeSource::Lazy(get) => match get() {
                Some(tree) => {
                    owned = tree;
                    &owned
                }
                None => return analysis,
            },
        };
        if analysis.indexed.is_none() {
            analysis.own = symbols::extract_declarations(language, tree, cursor.text);
            analysis
                .own
                .definitions
                .retain(|d| d.lines.start != layout.cursor_line);
        }
        let cursor_line = layout.cursor_line;
        let near_start = layout.line_starts[cursor_line.saturating_sub(NEARBY_LINES)];
        let scope = symbols::enclosing_scope(tree, cursor_line, layout.cursor_line_start())
            .unwrap_or(near_start..layout.cursor_line_end());
        let range = scope.start.min(near_start)..scope.end.max(layout.cursor_line_start());
        let mut used = symbols::identifiers_in(tree, cursor.text, range);
        used.retain(|(_, line)| *line != cursor_line);
        // Nearest to the cursor line first.
        used.sort_by_key(|(_, line)| line.abs_diff(cursor_line));
        let mut seen = HashSet::new();
        analysis.nearby = used
            .into_iter()
            .filter_map(|(name, _)| seen.insert(name.clone()).then_some(name))
            .collect();
        analysis
    }

    fn symbols(&self) -> &FileSymbols {
        self.indexed.as_ref().map_or(&self.own, |f| &f.symbols)
    }
}

fn candidates(
    index: &WorkspaceIndex,
    cursor: &Cursor,
    layout: &Layout,
    analysis: &Analysis,
    recent: &[RecentChunk],
) -> Vec<Snippet> {
    let relative = cursor.relative.unwrap_or("");
    let current = analysis.indexed.as_ref().map(|f| f.id);
    let mut snippets = Vec::new();
    let mut imported_files: HashSet<FileId> = HashSet::new();
    let defined_here: HashSet<&str> = analysis
        .symbols()
        .definitions
        .iter()
        .map(|d| d.name.as_str())
        .collect();

    let nearby_rank: HashMap<&str, usize> = analysis
        .nearby
        .iter()
        .enumerate()
        .map(|(rank, name)| (name.as_str(), rank))
        .collect();
    // Imports: the definitions of imported names, and the outlines of imported modules.
    for import in &analysis.symbols().imports {
        let resolved = import
            .module
            .as_deref()
            .map(|m| index.resolve_module(relative, m))
            .unwrap_or_default();
        let resolved: Vec<FileId> = resolved
            .into_iter()
            .filter(|f| Some(*f) != current)
            .collect();
        imported_files.extend(&resolved);
        let mut named_found = false;
        for name in &import.names {
            let mut definitions = index.definitions_named(name);
            definitions.retain(|(f, _)| Some(f.id) != current && same_family(cursor, f));
            let in_module: Vec<_> = definitions
                .iter()
                .filter(|(f, _)| resolved.contains(&f.id))
                .cloned()
                .collect();
            let chosen = if !in_module.is_empty() {
                in_module
            } else if definitions.len() <= AMBIGUOUS {
                definitions
            } else {
                Vec::new()
            };
            // Imported names the code near the cursor uses come first.
            let score = nearby_rank
                .get(name.as_str())
                .map_or(72.0, |rank| (95.0 - *rank as f64 * 0.1).max(85.0));
            for (file, definition) in chosen {
                named_found = true;
                snippets.push(definition_snippet(
                    BlockKind::Import,
                    file,
                    definition,
                    format!("imported: {name}"),
                    score,
                ));
            }
        }
        if !named_found {
            // A module used by name near the cursor (`util.parse(...)`) matters more.
            let module = import.module.as_deref().unwrap_or_default();
            let alias = module.rsplit(['.', '/', ':']).next().unwrap_or(module);
            let score = if nearby_rank.contains_key(alias) {
                85.0
            } else {
                50.0
            };
            for file in resolved.iter().take(3).filter_map(|id| index.file(*id)) {
                snippets.extend(outline_snippet(
                    BlockKind::Module,
                    &file.relative,
                    file.language.spec.line_comment,
                    &file.symbols.definitions,
                    &format!("imported module: {module}"),
                    score,
                ));
            }
        }
    }

    // Ambiguous names are looked up in the imported files only: their definitions by name.
    let mut imported_definitions: HashMap<&str, Vec<(&Arc<IndexedFile>, &Definition)>> =
        HashMap::new();
    for file in imported_files.iter().filter_map(|id| index.file(*id)) {
        for definition in &file.symbols.definitions {
            imported_definitions
                .entry(definition.name.as_str())
                .or_default()
                .push((file, definition));
        }
    }
    // Identifiers used near the cursor, nearest first.
    for (rank, name) in analysis.nearby.iter().enumerate() {
        if defined_here.contains(name.as_str()) {
            continue;
        }
        let mut definitions = if index.definition_count(name) > AMBIGUOUS + 1 {
            imported_definitions
                .get(name.as_str())
                .cloned()
                .unwrap_or_default()
        } else {
            index.definitions_named(name)
        };
        definitions.retain(|(f, _)| Some(f.id) != current && same_family(cursor, f));
        if definitions.len() > AMBIGUOUS {
            definitions.retain(|(f, _)| imported_files.contains(&f.id));
        }
        for (file, definition) in definitions {
            let bonus = if imported_files.contains(&file.id) {
                5.0
            } else {
                0.0
            };
            snippets.push(definition_snippet(
                BlockKind::Definition,
                file,
                definition,
                format!("used near the cursor: {name}"),
                80.0 + bonus - rank as f64 * 0.25,
            ));
        }
    }

    // Code like the lines before the cursor.
    let query_start = layout.cursor_line.saturating_sub(SIMILAR_QUERY_LINES);
    let query = layout.lines(cursor.text, query_start..layout.cursor_line);
    for found in index.similar(query, current, SIMILAR_LIMIT, SIMILAR_MIN_SCORE) {
        let Some(file) = index.file(found.file) else {
            continue;
        };
        let text: String = file
            .text
            .lines()
            .skip(found.lines.start)
            .take(found.lines.len())
            .map(|l| format!("{l}\n"))
            .collect();
        snippets.push(Snippet {
            kind: BlockKind::Similar,
            path: file.relative.clone(),
            comment: file.language.spec.line_comment,
            lines: found.lines.clone(),
            text,
            reason: format!(
                "similar to the lines before the cursor (jaccard {:.2})",
                found.score
            ),
            score: 40.0 + 40.0 * found.score,
        });
    }

    // Recently edited or visited code of other open files.
    for chunk in recent {
        if Some(chunk.relative.as_str()) == cursor.relative {
            continue;
        }
        let comment = chunk
            .language
            .and_then(super::languages::by_name)
            .map_or("//", |l| l.spec.line_comment);
        snippets.push(Snippet {
            kind: BlockKind::Recent,
            path: chunk.relative.clone(),
            comment,
            lines: chunk.lines.clone(),
            text: ensure_line_end(&chunk.text),
            reason: "recently edited".to_string(),
            score: 45.0,
        });
    }
    snippets
}

/// Whether a file's definitions can serve the cursor's language (any, when it has none).
fn same_family(cursor: &Cursor, file: &IndexedFile) -> bool {
    cursor
        .language
        .is_none_or(|language| language.same_family(file.language))
}

fn definition_snippet(
    kind: BlockKind,
    file: &super::index::IndexedFile,
    definition: &Definition,
    reason: String,
    score: f64,
) -> Snippet {
    Snippet {
        kind,
        path: file.relative.clone(),
        comment: file.language.spec.line_comment,
        lines: definition.lines.clone(),
        text: ensure_line_end(&definition.snippet),
        reason,
        score,
    }
}

/// The signatures of a file's definitions, nested by indentation, up to `OUTLINE_LINES`.
fn outline_snippet(
    kind: BlockKind,
    path: &str,
    comment: &'static str,
    definitions: &[Definition],
    reason: &str,
    score: f64,
) -> Option<Snippet> {
    let mut text = String::new();
    let mut covered: Option<Range<usize>> = None;
    let mut enclosing: Vec<Range<usize>> = Vec::new();
    for definition in definitions.iter().take(OUTLINE_LINES) {
        enclosing.retain(|r| r.end > definition.bytes.start);
        let depth = enclosing.len();
        enclosing.push(definition.bytes.clone());
        text.push_str(&"    ".repeat(depth));
        text.push_str(&symbols::one_line(&definition.signature));
        text.push('\n');
        covered = Some(match covered {
            Some(c) => c.start.min(definition.lines.start)..c.end.max(definition.lines.end),
            None => definition.lines.clone(),
        });
    }
    (!text.is_empty()).then(|| Snippet {
        kind,
        path: path.to_string(),
        comment,
        lines: covered.unwrap_or(0..0),
        text,
        reason: reason.to_string(),
        score,
    })
}

/// The current file's definitions the prompt's window does not show.
fn outline_of_current(
    cursor: &Cursor,
    analysis: &Analysis,
    prefix_start_line: usize,
    suffix_end_line: usize,
) -> Option<Snippet> {
    let hidden: Vec<Definition> = analysis
        .symbols()
        .definitions
        .iter()
        .filter(|d| d.lines.start < prefix_start_line || d.lines.start >= suffix_end_line)
        .cloned()
        .collect();
    outline_snippet(
        BlockKind::Outline,
        cursor.relative.unwrap_or("this file"),
        comment_of(cursor),
        &hidden,
        "outline of the current file outside the window",
        70.0,
    )
}

fn ensure_line_end(text: &str) -> String {
    if text.ends_with('\n') {
        text.to_string()
    } else {
        format!("{text}\n")
    }
}

/// Picks snippets by score within `budget` tokens, drops duplicates and overlaps, and lays the
/// survivors out as blocks in prompt order: by kind, then path, then line.
fn select(counts: &CountCache, mut snippets: Vec<Snippet>, budget: usize) -> Vec<Block> {
    snippets.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then(a.path.cmp(&b.path))
            .then(a.lines.start.cmp(&b.lines.start))
    });
    let mut chosen: Vec<Snippet> = Vec::new();
    let mut used = 0;
    let mut headers: HashSet<(BlockKind, String)> = HashSet::new();
    for mut snippet in snippets {
        if snippet.kind == BlockKind::Recent {
            match uncovered_part(&snippet, &chosen) {
                Some(part) => snippet = part,
                None => continue,
            }
        }
        let duplicate = chosen.iter().any(|c| {
            c.path == snippet.path
                && (c.text == snippet.text
                    || c.lines.start < snippet.lines.end
                        && snippet.lines.start < c.lines.end
                        && c.kind != BlockKind::Module
                        && snippet.kind != BlockKind::Module)
        });
        if duplicate {
            continue;
        }
        let header_cost = if headers.contains(&(snippet.kind, snippet.path.clone())) {
            0
        } else {
            counts.text(&header(snippet.comment, &snippet.path))
        };
        let cost = header_cost + counts.text(&snippet.text) + counts.text("\n");
        if used + cost > budget {
            continue;
        }
        used += cost;
        headers.insert((snippet.kind, snippet.path.clone()));
        chosen.push(snippet);
    }
    chosen.sort_by(|a, b| (a.kind, &a.path, a.lines.start).cmp(&(b.kind, &b.path, b.lines.start)));
    let mut blocks: Vec<Block> = Vec::new();
    for snippet in chosen {
        match blocks.last_mut() {
            Some(block) if block.path == snippet.path && block.kind == snippet.kind => {
                block.text.push_str(&snippet.text);
                block.text.push('\n');
                if !block.reason.contains(&snippet.reason) {
                    block.reason.push_str("; ");
                    block.reason.push_str(&snippet.reason);
                }
            }
            _ => blocks.push(Block {
                path: snippet.path.clone(),
                kind: snippet.kind,
                reason: snippet.reason.clone(),
                tokens: 0,
                text: format!(
                    "{}{}\n",
                    header(snippet.comment, &snippet.path),
                    snippet.text
                ),
            }),
        }
    }
    for block in &mut blocks {
        block.tokens = counts.text(&block.text);
    }
    // Exact counts of merged blocks can exceed the sum of their parts with some tokenizers.
    while blocks.iter().map(|b| b.tokens).sum::<usize>() > budget {
        blocks.pop();
    }
    blocks
}

/// A recent chunk without the lines other chosen snippets of its file already show: its
/// longest run of uncovered lines, `None` when nothing is left.
fn uncovered_part(snippet: &Snippet, chosen: &[Snippet]) -> Option<Snippet> {
    let covered = |line: usize| {
        chosen.iter().any(|c| {
            c.path == snippet.path && c.kind != BlockKind::Module && c.lines.contains(&line)
        })
    };
    let lines: Vec<&str> = snippet.text.split_inclusive('\n').collect();
    let mut best = 0..0;
    let mut run_start = None;
    for i in 0..=lines.len() {
        let line = snippet.lines.start + i;
        let open = i < lines.len() && !covered(line);
        match (open, run_start) {
            (true, None) => run_start = Some(i),
            (false, Some(start)) => {
                if i - start > best.len() {
                    best = start..i;
                }
                run_start = None;
            }
            _ => {}
        }
    }
    let text: String = lines[best.clone()].concat();
    (!text.trim().is_empty()).then(|| Snippet {
        lines: snippet.lines.start + best.start..snippet.lines.start + best.end,
        text,
        ..snippet.clone()
    })
}

fn header(comment: &str, path: &str) -> String {
    format!("{comment} {path}\n")
}

#[cfg(test)]
mod tests {
    use super::super::index::WorkspaceIndex;
    use super::super::languages;
    use super::super::scan::ScanOptions;
    use super::super::tokens::testing::WordCounter;
    use super::*;
    use std::path::Path;

    fn repo(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let full = dir.path().join(path);
            std::fs::create_dir_all(full.parent().unwrap()).unwrap();
            std::fs::write(full, text).unwrap();
        }
        dir
    }

    fn index_of(dir: &Path) -> WorkspaceIndex {
        let mut index = WorkspaceIndex::new(&[dir.to_path_buf()], ScanOptions::default());
        index.index_all(2, &|_, _| {});
        index
    }

    fn build(
        builder: &ContextBuilder,
        index: &WorkspaceIndex,
        path: &str,
        text: &str,
        offset: usize,
        tokens: usize,
    ) -> BuiltContext {
        let cursor = Cursor {
            text,
            offset,
            relative: Some(path),
            language: languages::for_path(Path::new(path)),
            tree: TreeSource::Parse,
            heal_indentation: true,
        };
        builder.build(
            Some(index),
            &cursor,
            Budget {
                tokens,
                suffix_lines: 10,
            },
            &[],
        )
    }

    const MODELS: &str = "class User:\n    def __init__(self, name: str):\n        self.name = name\n\n\ndef load_user(path: str) -> User:\n    \"\"\"Reads a user from a file.\"\"\"\n    return User(open(path).read())\n";

    #[test]
    fn bare_indentation_before_the_cursor_is_left_to_the_model() {
        let text = "def f(a):\n    \n    return a\n";
        let dir = repo(&[("m.py", text)]);
        let index = index_of(dir.path());
        let builder = ContextBuilder::new(Box::new(WordCounter));
        // A blank line: the prefix stops at its start and the suffix starts at the next line.
        let blank = build(&builder, &index, "m.py", text, 14, 400);
        assert_eq!(blank.cut_indentation, "    ");
        assert!(blank.prefix.ends_with("def f(a):\n"), "{:?}", blank.prefix);
        assert_eq!(blank.suffix, "    return a\n");
        // Text after the cursor stays in the suffix.
        let before_return = build(&builder, &index, "m.py", text, 19, 400);
        assert_eq!(before_return.cut_indentation, "    ");
        assert!(before_return.prefix.ends_with("    \n"));
        assert_eq!(before_return.suffix, "return a\n");
        // Mid-line: nothing is cut.
        let mid = build(&builder, &index, "m.py", text, 21, 400);
        assert_eq!(mid.cut_indentation, "");
        assert!(mid.prefix.ends_with("    re"));
    }

    #[test]
    fn imported_definitions_come_first_and_the_budget_holds() {
        let app = "from .models import load_user\n\n\ndef main(argv):\n    path = argv[1]\n    \n";
        let dir = repo(&[("pkg/models.py", MODELS), ("pkg/app.py", app)]);
        let index = index_of(dir.path());
        let builder = ContextBuilder::new(Box::new(WordCounter));
        let offset = app.len() - 1;
        let built = build(&builder, &index, "pkg/app.py", app, offset, 400);
        assert_eq!(built.blocks[0].kind, BlockKind::Import);
        assert_eq!(built.blocks[0].path, "pkg/models.py");
        assert!(built.blocks[0].text.starts_with("# pkg/models.py\n"));
        assert!(built.text().contains("def load_user(path: str) -> User:"));
        assert!(built.prefix.starts_with("# pkg/app.py\nfrom .models"));
        let exact = 4
            + built
                .blocks
                .iter()
                .map(|b| WordCounter.count(&b.text))
                .sum::<usize>()
            + WordCounter.count(&built.prefix)
            + WordCounter.count(&built.suffix);
        assert_eq!(built.prompt_tokens, exact);
        for budget in [30, 60, 120, 400] {
            let built = build(&builder, &index, "pkg/app.py", app, offset, budget);
            assert!(
                built.prompt_tokens <= budget,
                "{} > {budget}",
                built.prompt_tokens
            );
        }
    }

    #[test]
    fn empty_and_unterminated_documents_build_within_the_budget() {
        let dir = repo(&[("pkg/models.py", MODELS)]);
        let index = index_of(dir.path());
        let builder = ContextBuilder::new(Box::new(WordCounter));
        for (text, offset) in [("", 0), ("x = 1", 5), ("x = 1\ny", 7), ("\n\n", 1)] {
            for budget in [16, 64, 400] {
                let built = build(&builder, &index, "pkg/app.py", text, offset, budget);
                assert!(built.prompt_tokens <= budget, "{text:?} at {budget}");
                assert!(
                    built.prefix.ends_with(&text[..offset]) || budget < 64,
                    "{text:?}"
                );
                assert_eq!(built.suffix, text[offset..]);
            }
        }
    }

    #[test]
    fn typing_on_the_cursor_line_keeps_everything_before_it() {
        let lines: String = (0..300)
            .map(|i| format!("    total = total + step_{i}(total)\n"))
            .collect();
        let app = format!(
            "from .models import load_user\n\ndef main(argv):\n    total = 0\n{lines}    \n    return total\n"
        );
        let dir = repo(&[("pkg/models.py", MODELS), ("pkg/app.py", &app)]);
        let index = index_of(dir.path());
        let builder = ContextBuilder::new(Box::new(WordCounter));
        let line_start = app.rfind("    \n    return").unwrap();
        let mut text = app.clone();
        let mut before_line = None;
        for (i, typed) in "user = load_user(argv[1]).name".chars().enumerate() {
            let cursor = line_start + 4 + i;
            text.insert(cursor, typed);
            let built = build(&builder, &index, "pkg/app.py", &text, cursor + 1, 1500);
            assert!(built.prompt_tokens <= 1500);
            let prompt = built.text();
            let head =
                prompt[..prompt.len() - built.suffix.len() - (cursor + 1 - line_start)].to_string();
            match &before_line {
                None => before_line = Some(head),
                Some(first) => assert_eq!(first, &head, "after typing {typed:?}"),
            }
        }
        let built = build(&builder, &index, "pkg/app.py", &text, line_start + 4, 1500);
        assert!(
            built.prefix_start_line > 0,
            "the file is longer than the budget"
        );
        assert_eq!(built.prefix_start_line % ANCHOR_LINES, 0);
    }
}
