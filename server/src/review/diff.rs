//! Unified diffs as `git diff` writes them, read into files and hunks with the line numbers of
//! the added lines on the new side: what a review may point at.

use std::ops::RangeInclusive;

/// One file of a diff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDiff {
    /// The path on the new side, relative to the repository root (`/`-separated).
    pub path: String,
    /// The path on the old side when the file was renamed or copied.
    pub old_path: Option<String>,
    pub hunks: Vec<Hunk>,
}

/// One `@@` hunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hunk {
    /// 1-based line numbers on the new side of every added line, ascending.
    pub added: Vec<usize>,
    /// The removed lines' text, for the prompt (what the change replaced).
    pub removed: Vec<String>,
    /// The function or section name git printed after the `@@` header, if any.
    pub section: String,
}

impl Hunk {
    /// The new-side lines from the first to the last added one.
    pub fn span(&self) -> Option<RangeInclusive<usize>> {
        Some(*self.added.first()?..=*self.added.last()?)
    }

    /// Whether every line of `lines` was added by this hunk.
    pub fn covers(&self, lines: &RangeInclusive<usize>) -> bool {
        lines
            .clone()
            .all(|line| self.added.binary_search(&line).is_ok())
    }
}

impl FileDiff {
    /// Whether every line of `lines` was added by one hunk of this file.
    pub fn added_lines_cover(&self, lines: &RangeInclusive<usize>) -> bool {
        self.hunks.iter().any(|h| h.covers(lines))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("diff line {line}: {message}")]
pub struct DiffError {
    pub line: usize,
    pub message: String,
}

/// Reads `git diff` output (any context size; `--no-color`, no external diff). Deleted files,
/// binary files and hunks that only remove lines add nothing to review and are left out.
pub fn parse_diff(text: &str) -> Result<Vec<FileDiff>, DiffError> {
    let mut files: Vec<FileDiff> = Vec::new();
    let mut current: Option<FileDiff> = None;
    // Lines still expected in the current hunk: (old side, new side), and the next new line.
    let mut remaining = (0usize, 0usize);
    let mut new_line = 0usize;
    let mut renamed_from: Option<String> = None;
    for (index, line) in text.lines().enumerate() {
        let error = |message: String| DiffError {
            line: index + 1,
            message,
        };
        if remaining != (0, 0) {
            let hunk = current
                .as_mut()
                .and_then(|f| f.hunks.last_mut())
                .ok_or_else(|| error("a hunk line outside a hunk".into()))?;
            match line.as_bytes().first() {
                Some(b'+') if remaining.1 > 0 => {
                    hunk.added.push(new_line);
                    new_line += 1;
                    remaining.1 -= 1;
                }
                Some(b'-') if remaining.0 > 0 => {
                    hunk.removed.push(line[1..].to_string());
                    remaining.0 -= 1;
                }
                Some(b' ') | None if remaining.0 > 0 && remaining.1 > 0 => {
                    new_line += 1;
                    remaining.0 -= 1;
                    remaining.1 -= 1;
                }
                Some(b'\\') => {} // "\ No newline at end of file"
                _ => return Err(error(format!("unexpected line in a hunk: {line:?}"))),
            }
            continue;
        }
        if line.starts_with("diff --git ") {
            files.extend(current.take().filter(|f| !f.hunks.is_empty()));
            renamed_from = None;
            current = Some(FileDiff {
                path: String::new(),
                old_path: None,
                hunks: Vec::new(),
            });
        } else if let Some(from) = line
            .strip_prefix("rename from ")
            .or_else(|| line.strip_prefix("copy from "))
        {
            renamed_from = Some(unquote(from));
        } else if let Some(path) = line.strip_prefix("+++ ") {
            let file = current
                .as_mut()
                .ok_or_else(|| error("`+++` before `diff --git`".into()))?;
            file.path = if path == "/dev/null" {
                String::new() // deleted: nothing to review
            } else {
                strip_side(&unquote(path), "b/")
            };
            file.old_path = renamed_from.take();
        } else if let Some(header) = line.strip_prefix("@@ ") {
            let file = current
                .as_mut()
                .ok_or_else(|| error("a hunk before `diff --git`".into()))?;
            let (old_count, new_start, new_count, section) = parse_hunk_header(header)
                .ok_or_else(|| error(format!("bad hunk header {line:?}")))?;
            remaining = (old_count, new_count);
            new_line = new_start;
            file.hunks.push(Hunk {
                added: Vec::new(),
                removed: Vec::new(),
                section,
            });
        }
        // Other header lines (index, mode, similarity, ---, Binary files ...) say nothing we use.
    }
    if remaining != (0, 0) {
        return Err(DiffError {
            line: text.lines().count(),
            message: "the diff ends inside a hunk".into(),
        });
    }
    files.extend(current.filter(|f| !f.hunks.is_empty()));
    for file in &mut files {
        file.hunks.retain(|h| !h.added.is_empty());
    }
    files.retain(|f| !f.path.is_empty() && !f.hunks.is_empty());
    Ok(files)
}

/// `-a[,b] +c[,d] @@ section` -> (b, c, d, section); a missing count is 1.
fn parse_hunk_header(header: &str) -> Option<(usize, usize, usize, String)> {
    let (ranges, section) = header.split_once(" @@").unwrap_or((header, ""));
    let mut parts = ranges.split(' ');
    let old = parts.next()?.strip_prefix('-')?;
    let new = parts.next()?.strip_prefix('+')?;
    let count = |range: &str| -> Option<(usize, usize)> {
        match range.split_once(',') {
            Some((start, count)) => Some((start.parse().ok()?, count.parse().ok()?)),
            None => Some((range.parse().ok()?, 1)),
        }
    };
    let (_, old_count) = count(old)?;
    let (new_start, new_count) = count(new)?;
    Some((old_count, new_start, new_count, section.trim().to_string()))
}

fn strip_side(path: &str, side: &str) -> String {
    path.strip_prefix(side).unwrap_or(path).to_string()
}

/// Git's C-style quoting of unusual paths (`"a/caf\303\251.py"`), undone.
fn unquote(path: &str) -> String {
    let Some(inner) = path.strip_prefix('"').and_then(|p| p.strip_suffix('"')) else {
        return path.to_string();
    };
    let mut bytes = Vec::new();
    let mut chars = inner.bytes().peekable();
    while let Some(b) = chars.next() {
        if b != b'\\' {
            bytes.push(b);
            continue;
        }
        match chars.next() {
            Some(b'n') => bytes.push(b'\n'),
            Some(b't') => bytes.push(b'\t'),
            Some(d @ b'0'..=b'7') => {
                let mut value = u32::from(d - b'0');
                for _ in 0..2 {
                    if let Some(&next @ b'0'..=b'7') = chars.peek() {
                        value = value * 8 + u32::from(next - b'0');
                        chars.next();
                    }
                }
                bytes.push(value as u8);
            }
            Some(other) => bytes.push(other),
            None => bytes.push(b'\\'),
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIFF: &str = "\
diff --git a/src/app.py b/src/app.py
index 1111111..2222222 100644
--- a/src/app.py
+++ b/src/app.py
@@ -3,2 +3,3 @@ def main():
     total = 0
-    for x in xs:
+    for x in xs[1:]:
+        total += x
@@ -20 +21,0 @@ class Cart:
-    pass
diff --git a/old.py b/old.py
deleted file mode 100644
--- a/old.py
+++ /dev/null
@@ -1 +0,0 @@
-x = 1
diff --git a/logo.png b/logo.png
Binary files a/logo.png and b/logo.png differ
diff --git a/a.rs b/\"caf\\303\\251 b.rs\"
similarity index 90%
rename from a.rs
rename to \"caf\\303\\251 b.rs\"
--- a/a.rs
+++ \"b/caf\\303\\251 b.rs\"
@@ -1,0 +2 @@
+fn f() {}
\\ No newline at end of file
";

    #[test]
    fn added_lines_are_numbered_on_the_new_side() {
        let files = parse_diff(DIFF).unwrap();
        assert_eq!(files.len(), 2, "{files:?}");
        let app = &files[0];
        assert_eq!(app.path, "src/app.py");
        assert_eq!(app.hunks.len(), 1, "the removal-only hunk is left out");
        let hunk = &app.hunks[0];
        assert_eq!(hunk.added, vec![4, 5]);
        assert_eq!(hunk.removed, vec!["    for x in xs:".to_string()]);
        assert_eq!(hunk.section, "def main():");
        assert!(app.added_lines_cover(&(4..=5)));
        assert!(!app.added_lines_cover(&(3..=4)), "line 3 is context");
        let renamed = &files[1];
        assert_eq!(renamed.path, "café b.rs");
        assert_eq!(renamed.old_path.as_deref(), Some("a.rs"));
        assert_eq!(renamed.hunks[0].added, vec![2]);
    }

    #[test]
    fn malformed_diffs_are_errors_with_a_line() {
        let cut = "diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1 +1,2 @@\n+a\n";
        assert_eq!(
            parse_diff(cut).unwrap_err().message,
            "the diff ends inside a hunk"
        );
        let stray = "diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1 +1 @@\n?oops\n";
        assert_eq!(parse_diff(stray).unwrap_err().line, 5);
        assert!(parse_diff("").unwrap().is_empty());
    }
}
