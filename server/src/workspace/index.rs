//! The symbol index of a workspace: every indexable file of every workspace folder with its text,
//! definitions, imports and references; definitions by name; modules by path; similar-code
//! windows. Built in parallel once, then kept current file by file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use super::languages::{self, Compiled};
use super::scan::{self, FoundFile, ScanOptions, Skip, SkipCounts};
use super::similar::{Match, SimilarIndex};
use super::symbols::{self, Definition, FileSymbols, Reference};

pub type FileId = u32;

/// One indexed file.
#[derive(Debug)]
pub struct IndexedFile {
    pub id: FileId,
    pub path: PathBuf,
    /// Relative to its workspace folder, `/`-separated: what prompts and reports show.
    pub relative: String,
    pub language: &'static Compiled,
    pub text: Arc<str>,
    pub symbols: FileSymbols,
}

impl IndexedFile {
    pub fn line_count(&self) -> usize {
        self.text.lines().count()
    }

    /// The references (calls, type uses...) within `radius` lines of `line`, nearest first.
    pub fn references_near(&self, line: usize, radius: usize) -> Vec<&Reference> {
        let mut near: Vec<&Reference> = self
            .symbols
            .references
            .iter()
            .filter(|r| r.line.abs_diff(line) <= radius)
            .collect();
        near.sort_by_key(|r| r.line.abs_diff(line));
        near
    }
}

/// Figures from a full indexing run.
#[derive(Debug, Clone, Default)]
pub struct IndexStats {
    pub files: usize,
    pub lines: usize,
    pub bytes: usize,
    pub definitions: usize,
    pub seconds: f64,
    pub skipped: SkipCounts,
}

pub struct WorkspaceIndex {
    roots: Vec<PathBuf>,
    options: ScanOptions,
    files: HashMap<FileId, Arc<IndexedFile>>,
    by_path: HashMap<PathBuf, FileId>,
    by_relative: HashMap<String, FileId>,
    by_name: HashMap<String, Vec<(FileId, usize)>>,
    /// Files by the last segment of their module path (`src/net/http.rs` -> `http`; `mod.rs`,
    /// `__init__.py` and `index.ts` stand for their folder), and by their folder's name.
    by_module_name: HashMap<String, Vec<FileId>>,
    by_folder_name: HashMap<String, Vec<FileId>>,
    similar: SimilarIndex,
    next_id: FileId,
    generation: u64,
}

impl WorkspaceIndex {
    /// An empty index over these folders (canonicalised; missing ones are dropped).
    pub fn new(roots: &[PathBuf], options: ScanOptions) -> Self {
        Self {
            roots: roots.iter().filter_map(|r| r.canonicalize().ok()).collect(),
            options,
            files: HashMap::new(),
            by_path: HashMap::new(),
            by_relative: HashMap::new(),
            by_name: HashMap::new(),
            by_module_name: HashMap::new(),
            by_folder_name: HashMap::new(),
            similar: SimilarIndex::default(),
            next_id: 0,
            generation: 0,
        }
    }

    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    /// Bumped by every change; lets callers cache what they derived from the index.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Scans every folder and indexes what it finds on `threads` threads, calling
    /// `progress(done, total)` as files complete.
    pub fn index_all(
        &mut self,
        threads: usize,
        progress: &(dyn Fn(usize, usize) + Sync),
    ) -> IndexStats {
        let started = Instant::now();
        let mut stats = IndexStats::default();
        let mut found: Vec<FoundFile> = Vec::new();
        for root in self.roots.clone() {
            let (files, skipped) = scan::scan(&root, &self.options);
            found.extend(files);
            add_skips(&mut stats.skipped, &skipped);
        }
        let total = found.len();
        let next = AtomicUsize::new(0);
        let done = AtomicUsize::new(0);
        let options = &self.options;
        let parsed: Vec<(usize, Result<Prepared, Skip>)> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads.max(1))
                .map(|_| {
                    scope.spawn(|| {
                        let mut out = Vec::new();
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some(file) = found.get(i) else { break };
                            out.push((i, prepare(file.language, &file.path, options)));
                            let finished = done.fetch_add(1, Ordering::Relaxed) + 1;
                            if finished.is_multiple_of(64) || finished == total {
                                progress(finished, total);
                            }
                        }
                        out
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().unwrap_or_default())
                .collect()
        });
        let mut parsed = parsed;
        parsed.sort_by_key(|(i, _)| *i);
        for (i, result) in parsed {
            match result {
                Ok(prepared) => {
                    let file = &found[i];
                    stats.files += 1;
                    stats.lines += prepared.text.lines().count();
                    stats.bytes += prepared.text.len();
                    stats.definitions += prepared.symbols.definitions.len();
                    self.insert(
                        file.path.clone(),
                        file.relative.clone(),
                        file.language,
                        prepared,
                    );
                }
                Err(skip) => stats.skipped.count(skip),
            }
        }
        stats.seconds = started.elapsed().as_secs_f64();
        stats
    }

    /// Indexes `text` as the content of `path` (an open document's unsaved text). Returns false
    /// when the path is not in a workspace folder or not of a known language.
    pub fn upsert_text(&mut self, path: &Path, text: &str) -> bool {
        let Some(language) = languages::for_path(path) else {
            return false;
        };
        let Some(relative) = self.relative_path(path) else {
            return false;
        };
        let tree = symbols::parse(language, text, None);
        let symbols = tree
            .map(|t| symbols::extract(language, &t, text))
            .unwrap_or_default();
        let prepared = Prepared {
            text: Arc::from(text),
            symbols,
        };
        self.insert(self.key(path), relative, language, prepared);
        true
    }

    /// Re-reads `path` from disk: indexes it if it is indexable, forgets it otherwise (deleted,
    /// now ignored, grown too large).
    pub fn refresh_path(&mut self, path: &Path) {
        let indexable = self.relative_path(path).is_some()
            && languages::for_path(path).is_some()
            && !self.is_ignored(path);
        match indexable.then(|| scan::read(path, &self.options)) {
            Some(Ok(text)) => {
                self.upsert_text(path, &text);
            }
            _ => self.remove_path(path),
        }
    }

    pub fn remove_path(&mut self, path: &Path) {
        if let Some(id) = self.by_path.remove(&self.key(path)) {
            self.forget(id);
            self.generation += 1;
        }
    }

    pub fn file(&self, id: FileId) -> Option<&Arc<IndexedFile>> {
        self.files.get(&id)
    }

    /// The file at a path relative to a workspace folder.
    pub fn file_by_relative(&self, relative: &str) -> Option<&Arc<IndexedFile>> {
        self.files.get(self.by_relative.get(relative)?)
    }

    pub fn file_by_path(&self, path: &Path) -> Option<&Arc<IndexedFile>> {
        self.files.get(self.by_path.get(&self.key(path))?)
    }

    pub fn files(&self) -> impl Iterator<Item = &Arc<IndexedFile>> {
        self.files.values()
    }

    /// Every definition called `name`.
    pub fn definitions_named(&self, name: &str) -> Vec<(&Arc<IndexedFile>, &Definition)> {
        self.by_name
            .get(name)
            .into_iter()
            .flatten()
            .filter_map(|&(id, i)| {
                let file = self.files.get(&id)?;
                Some((file, file.symbols.definitions.get(i)?))
            })
            .collect()
    }

    /// How many definitions are called `name` (ambiguity of a name).
    pub fn definition_count(&self, name: &str) -> usize {
        self.by_name.get(name).map_or(0, Vec::len)
    }

    /// The files an import of `module` in `from` refers to: relative specs (`./x`, `.x`, `../x`)
    /// against the importing file's folder, others by matching the end of the module path
    /// against file and folder paths (`crate::net::http` -> `src/net/http.rs`,
    /// `github.com/u/p/util` -> the files of `util/`, `pkg.mod` -> `pkg/mod.py`).
    pub fn resolve_module(&self, from: &str, module: &str) -> Vec<FileId> {
        let module = module.trim();
        if module.is_empty() {
            return Vec::new();
        }
        if let Some(resolved) = self.resolve_relative(from, module) {
            return resolved;
        }
        // C and C++ include paths, and path-like specs with a source extension, are paths.
        let known_extension = |p: &str| {
            Path::new(p)
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| {
                    languages::LANGUAGES
                        .iter()
                        .any(|l| l.extensions.contains(&e))
                })
        };
        let from_c_family = languages::for_path(Path::new(from))
            .is_some_and(|l| matches!(l.spec.name, "c" | "cpp"));
        if from_c_family || module.contains('/') && known_extension(module) {
            let found = self.by_suffix(module, true);
            return self.with_companions(found);
        }
        let segments: Vec<&str> = module
            .split([':', '.', '/', '\\'])
            .filter(|s| !s.is_empty() && !matches!(*s, "crate" | "self" | "super" | "*"))
            .collect();
        // Longest first: a leading part (`crate::net::http::get` -> `net/http`) or a trailing
        // one (`example.com/me/proj/internal/util` -> `internal/util`).
        for keep in (1..=segments.len()).rev() {
            let leading = segments[..keep].join("/");
            let trailing = segments[segments.len() - keep..].join("/");
            for suffix in [leading, trailing] {
                let found = self.by_suffix(&suffix, false);
                if !found.is_empty() {
                    return self.nearest(from, found);
                }
            }
        }
        Vec::new()
    }

    /// The windows of other files most similar to `query`.
    pub fn similar(
        &self,
        query: &str,
        exclude: Option<FileId>,
        limit: usize,
        min_score: f64,
    ) -> Vec<Match> {
        self.similar.query(query, exclude, limit, min_score)
    }

    fn resolve_relative(&self, from: &str, module: &str) -> Option<Vec<FileId>> {
        let folder = from.rsplit_once('/').map_or("", |(d, _)| d);
        let path = if module.starts_with("./") || module.starts_with("../") {
            join_relative(folder, module)
        } else if module.starts_with('.') {
            // Python: one dot is this package, each more dot one folder up.
            let dots = module.chars().take_while(|&c| c == '.').count();
            let mut base = folder.to_string();
            for _ in 1..dots {
                base = base
                    .rsplit_once('/')
                    .map_or(String::new(), |(d, _)| d.to_string());
            }
            let rest = module[dots..].replace('.', "/");
            if rest.is_empty() {
                base
            } else if base.is_empty() {
                rest
            } else {
                format!("{base}/{rest}")
            }
        } else {
            return None;
        };
        let found: Vec<FileId> = self
            .files
            .values()
            .filter(|f| {
                let without_extension =
                    f.relative.rsplit_once('.').map_or(&*f.relative, |(s, _)| s);
                f.relative == path || without_extension == path || module_path(&f.relative) == path
            })
            .map(|f| f.id)
            .collect();
        Some(found)
    }

    fn by_suffix(&self, suffix: &str, with_extension: bool) -> Vec<FileId> {
        let last = suffix.rsplit('/').next().unwrap_or(suffix);
        let ends_with = |path: &str| path == suffix || path.ends_with(&format!("/{suffix}"));
        let mut found: Vec<FileId> = Vec::new();
        if with_extension {
            found.extend(
                self.files
                    .values()
                    .filter(|f| ends_with(&f.relative))
                    .map(|f| f.id),
            );
        } else {
            let by_module = self.by_module_name.get(last).into_iter().flatten();
            found.extend(by_module.filter(|id| {
                self.files
                    .get(id)
                    .is_some_and(|f| ends_with(&module_path(&f.relative)))
            }));
            if found.is_empty() {
                let by_folder = self.by_folder_name.get(last).into_iter().flatten();
                found.extend(by_folder.filter(|id| {
                    self.files
                        .get(id)
                        .is_some_and(|f| ends_with(folder_of(&f.relative)))
                }));
            }
        }
        found.sort_unstable();
        found
    }

    /// Files plus their companions: the files of the same stem in the same folder (a C or C++
    /// header's implementation file, `x.h` with `x.c`).
    fn with_companions(&self, found: Vec<FileId>) -> Vec<FileId> {
        let mut all = found.clone();
        for id in found {
            let Some(file) = self.files.get(&id) else {
                continue;
            };
            let stem = file
                .relative
                .rsplit_once('.')
                .map_or(&*file.relative, |(s, _)| s);
            let name = stem.rsplit('/').next().unwrap_or(stem);
            for other in self.by_module_name.get(name).into_iter().flatten() {
                let same_stem = self.files.get(other).is_some_and(|o| {
                    o.relative.rsplit_once('.').map_or(&*o.relative, |(s, _)| s) == stem
                });
                if same_stem && !all.contains(other) {
                    all.push(*other);
                }
            }
        }
        all
    }

    /// Of several candidates, the ones sharing the longest folder prefix with `from`.
    fn nearest(&self, from: &str, mut found: Vec<FileId>) -> Vec<FileId> {
        const MAX: usize = 8;
        if found.len() <= MAX {
            return found;
        }
        let shared = |id: &FileId| {
            self.files.get(id).map_or(0, |f| {
                f.relative
                    .split('/')
                    .zip(from.split('/'))
                    .take_while(|(a, b)| a == b)
                    .count()
            })
        };
        found.sort_by_key(|id| (std::cmp::Reverse(shared(id)), *id));
        found.truncate(MAX);
        found
    }

    fn insert(
        &mut self,
        path: PathBuf,
        relative: String,
        language: &'static Compiled,
        prepared: Prepared,
    ) {
        if let Some(old) = self.by_path.get(&path).copied() {
            self.forget(old);
        }
        let id = self.next_id;
        self.next_id += 1;
        for (i, definition) in prepared.symbols.definitions.iter().enumerate() {
            self.by_name
                .entry(definition.name.clone())
                .or_default()
                .push((id, i));
        }
        let module = module_path(&relative);
        let module_name = module.rsplit('/').next().unwrap_or(&module).to_string();
        self.by_module_name.entry(module_name).or_default().push(id);
        let folder = folder_of(&relative);
        let folder_name = folder.rsplit('/').next().unwrap_or(folder).to_string();
        self.by_folder_name.entry(folder_name).or_default().push(id);
        self.similar.insert(id, &prepared.text);
        self.by_path.insert(path.clone(), id);
        self.by_relative.insert(relative.clone(), id);
        self.files.insert(
            id,
            Arc::new(IndexedFile {
                id,
                path,
                relative,
                language,
                text: prepared.text,
                symbols: prepared.symbols,
            }),
        );
        self.generation += 1;
    }

    fn forget(&mut self, id: FileId) {
        let Some(file) = self.files.remove(&id) else {
            return;
        };
        if self.by_relative.get(&file.relative) == Some(&id) {
            self.by_relative.remove(&file.relative);
        }
        for definition in &file.symbols.definitions {
            if let Some(entries) = self.by_name.get_mut(&definition.name) {
                entries.retain(|(f, _)| *f != id);
                if entries.is_empty() {
                    self.by_name.remove(&definition.name);
                }
            }
        }
        for map in [&mut self.by_module_name, &mut self.by_folder_name] {
            for ids in map.values_mut() {
                ids.retain(|f| *f != id);
            }
        }
        self.similar.remove(id);
    }

    fn key(&self, path: &Path) -> PathBuf {
        path.canonicalize().unwrap_or_else(|_| path.to_path_buf())
    }

    /// `path` relative to the workspace folder holding it, `/`-separated.
    pub fn relative_path(&self, path: &Path) -> Option<String> {
        let key = self.key(path);
        let root = self.roots.iter().find(|r| key.starts_with(r))?;
        let relative = key.strip_prefix(root).ok()?;
        Some(
            relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/"),
        )
    }

    /// Whether the ignore files of its folder exclude `path` (for watched-file events).
    fn is_ignored(&self, path: &Path) -> bool {
        let key = self.key(path);
        let Some(root) = self.roots.iter().find(|r| key.starts_with(r)) else {
            return true;
        };
        let mut builder = ignore::gitignore::GitignoreBuilder::new(root);
        let mut folder = key.parent();
        while let Some(dir) = folder {
            for name in [".gitignore", ".ignore", ".deepseekignore"] {
                let file = dir.join(name);
                if file.is_file() {
                    builder.add(file);
                }
            }
            if dir == root.as_path() {
                break;
            }
            folder = dir.parent();
        }
        builder
            .build()
            .map(|g| g.matched_path_or_any_parents(&key, false).is_ignore())
            .unwrap_or(false)
    }
}

struct Prepared {
    text: Arc<str>,
    symbols: FileSymbols,
}

fn prepare(
    language: &'static Compiled,
    path: &Path,
    options: &ScanOptions,
) -> Result<Prepared, Skip> {
    let text = scan::read(path, options)?;
    let symbols = symbols::parse(language, &text, None)
        .map(|tree| symbols::extract(language, &tree, &text))
        .unwrap_or_default();
    Ok(Prepared {
        text: Arc::from(text),
        symbols,
    })
}

fn add_skips(total: &mut SkipCounts, more: &SkipCounts) {
    total.too_large += more.too_large;
    total.binary += more.binary;
    total.generated += more.generated;
    total.unreadable += more.unreadable;
    total.outside_root += more.outside_root;
    total.over_file_limit += more.over_file_limit;
}

/// A file's path as a module: without its extension, and `mod.rs`, `__init__.py`, `index.js`
/// standing for their folder.
pub fn module_path(relative: &str) -> String {
    let without_extension = match relative.rsplit_once('.') {
        Some((stem, _)) if !stem.ends_with('/') && !stem.is_empty() => stem,
        _ => relative,
    };
    for package_file in ["/mod", "/__init__", "/index", "/lib"] {
        if let Some(folder) = without_extension.strip_suffix(package_file) {
            return folder.to_string();
        }
    }
    without_extension.to_string()
}

fn folder_of(relative: &str) -> &str {
    relative.rsplit_once('/').map_or("", |(d, _)| d)
}

/// `folder` joined with a `./` or `../` path, normalised.
fn join_relative(folder: &str, path: &str) -> String {
    let mut parts: Vec<&str> = folder.split('/').filter(|p| !p.is_empty()).collect();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    parts.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_resolve_to_files_and_references_are_found_near_a_line() {
        let dir = tempfile::tempdir().unwrap();
        let write = |path: &str, text: &str| {
            let full = dir.path().join(path);
            std::fs::create_dir_all(full.parent().unwrap()).unwrap();
            std::fs::write(full, text).unwrap();
        };
        write("src/net/http.rs", "pub fn get() {}\n");
        write("src/net/mod.rs", "pub mod http;\n");
        write("pkg/util/strings.go", "package util\nfunc Pad() {}\n");
        write("web/index.ts", "export function boot() {}\n");
        write(
            "web/app.ts",
            "import { boot } from './index';\nboot();\n\n\nboot();\n",
        );
        let mut index = WorkspaceIndex::new(&[dir.path().to_path_buf()], ScanOptions::default());
        index.index_all(1, &|_, _| {});
        let paths = |ids: Vec<FileId>| -> Vec<String> {
            ids.into_iter()
                .map(|id| index.file(id).unwrap().relative.clone())
                .collect()
        };
        assert_eq!(
            paths(index.resolve_module("src/main.rs", "crate::net::http::get")),
            ["src/net/http.rs"]
        );
        assert_eq!(
            paths(index.resolve_module("src/main.rs", "crate::net")),
            ["src/net/mod.rs"]
        );
        assert_eq!(
            paths(index.resolve_module("main.go", "example.com/me/proj/pkg/util")),
            ["pkg/util/strings.go"]
        );
        assert_eq!(
            paths(index.resolve_module("web/app.ts", "./index")),
            ["web/index.ts"]
        );
        assert!(
            index
                .resolve_module("src/main.rs", "std::collections::HashMap")
                .is_empty()
        );
        let app = index.file_by_relative("web/app.ts").unwrap();
        let near: Vec<usize> = app.references_near(1, 1).iter().map(|r| r.line).collect();
        assert_eq!(near, [1]);
        assert_eq!(app.references_near(3, 2).len(), 2);
    }

    #[test]
    fn module_paths_stand_for_packages() {
        assert_eq!(module_path("src/net/http.rs"), "src/net/http");
        assert_eq!(module_path("src/net/mod.rs"), "src/net");
        assert_eq!(module_path("pkg/__init__.py"), "pkg");
        assert_eq!(module_path("web/index.ts"), "web");
        assert_eq!(join_relative("src/app", "../lib/x"), "src/lib/x");
    }
}
