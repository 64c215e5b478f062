//! The context builder on small real-looking repositories, one per language
//! (`tests/fixtures/repos/<language>/`), counted with the model's own tokenizer.
//!
//! Each fixture has a cursor file (the `<CURSOR>` marker shows where a completion is asked for)
//! that uses a definition from another file of the repository, and an ignored folder whose decoy
//! definition the cursor file also calls. `expect.json` names the cursor file, the signatures
//! the prompt needs, the ignored file and the decoy's signature. The ignore file is kept as
//! `gitignore` (so that git does not leave the decoys out of the repository) and becomes
//! `.gitignore` in the temporary copy every test works on.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use server::workspace::context::{
    ANCHOR_LINES, Budget, BuiltContext, ContextBuilder, Cursor, TreeSource,
};
use server::workspace::index::WorkspaceIndex;
use server::workspace::languages;
use server::workspace::scan::ScanOptions;
use server::workspace::tokens::ModelTokens;

const MARKER: &str = "<CURSOR>";
const BUDGETS: [usize; 8] = [16, 32, 64, 128, 256, 512, 1024, 2048];

/// Each fixture, with the line a user would type at its cursor.
const FIXTURES: [(&str, &str); 8] = [
    ("rust", "let value = area(shape);"),
    ("python", "items = load_items(path)"),
    (
        "typescript",
        "const total = totalPrice(this.items, taxRate);",
    ),
    ("javascript", "const rows = parseCsv(text, \",\");"),
    ("go", "total := money.Sum(entries)"),
    ("java", "long total = PriceCalculator.totalCents(items);"),
    ("c", "double dot = vec_dot(&a, &b);"),
    ("cpp", "double length = geo::perimeter(square);"),
];

/// The model's tokenizer (the lite test model's), loaded once.
fn tokenizer() -> Arc<engine::TextTokenizer> {
    static TOKENIZER: OnceLock<Arc<engine::TextTokenizer>> = OnceLock::new();
    TOKENIZER
        .get_or_init(|| {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../engine/tests/fixtures/lite");
            let tokenizer = engine::TextTokenizer::from_dir(&dir, usize::MAX)
                .expect("the lite fixture's tokenizer loads");
            Arc::new(tokenizer)
        })
        .clone()
}

fn builder() -> ContextBuilder {
    ContextBuilder::new(Box::new(ModelTokens::new(tokenizer())))
}

/// What a fixture's `expect.json` says.
struct Expect {
    file: String,
    needs: Vec<String>,
    ignored: String,
    decoy: String,
}

impl Expect {
    fn read(fixture: &Path) -> Self {
        let path = fixture.join("expect.json");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        let field = |name: &str| {
            json[name]
                .as_str()
                .unwrap_or_else(|| panic!("{path:?}: no string {name:?}"))
                .to_string()
        };
        Self {
            file: field("file"),
            needs: json["needs"]
                .as_array()
                .unwrap_or_else(|| panic!("{path:?}: no \"needs\" list"))
                .iter()
                .map(|n| n.as_str().unwrap().to_string())
                .collect(),
            ignored: field("ignored"),
            decoy: field("decoy"),
        }
    }
}

/// A fixture copied to a temporary folder and indexed, with its cursor file read and unmarked.
struct Repo {
    language: &'static str,
    typed: &'static str,
    _dir: tempfile::TempDir,
    expect: Expect,
    file: PathBuf,
    /// The cursor file without its marker.
    text: String,
    /// Where the marker was.
    offset: usize,
    index: WorkspaceIndex,
}

impl Repo {
    fn open(language: &'static str, typed: &'static str) -> Self {
        Self::open_with(language, typed, true)
    }

    /// With `ignore_file` false, the fixture's ignore file is left out of the copy.
    fn open_with(language: &'static str, typed: &'static str, ignore_file: bool) -> Self {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/repos")
            .join(language);
        let expect = Expect::read(&fixture);
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join(language);
        copy_fixture(&fixture, &root, ignore_file);
        assert!(
            root.join(&expect.ignored).is_file(),
            "{language}: the ignored file {} is missing from the fixture",
            expect.ignored
        );
        let file = root.join(&expect.file);
        let marked = std::fs::read_to_string(&file).unwrap();
        let offset = marked
            .find(MARKER)
            .unwrap_or_else(|| panic!("{language}: no {MARKER} in {}", expect.file));
        let text = marked.replacen(MARKER, "", 1);
        std::fs::write(&file, &text).unwrap();
        let mut index = WorkspaceIndex::new(std::slice::from_ref(&root), ScanOptions::default());
        index.index_all(2, &|_, _| {});
        Self {
            language,
            typed,
            _dir: dir,
            expect,
            file,
            text,
            offset,
            index,
        }
    }

    fn build(
        &self,
        builder: &ContextBuilder,
        text: &str,
        offset: usize,
        tokens: usize,
    ) -> BuiltContext {
        build_at(builder, &self.index, &self.file, text, offset, tokens)
    }

    /// The prompt text that shows the decoy or the ignored file, if it does.
    fn leak(&self, prompt: &str) -> Option<&str> {
        [self.expect.ignored.as_str(), self.expect.decoy.as_str()]
            .into_iter()
            .find(|l| prompt.contains(l))
    }
}

fn all_repos() -> Vec<Repo> {
    FIXTURES
        .iter()
        .map(|(language, typed)| Repo::open(language, typed))
        .collect()
}

/// Copies a fixture, turning its `gitignore` into `.gitignore` (or leaving it out) and leaving
/// out `expect.json`.
fn copy_fixture(from: &Path, to: &Path, ignore_file: bool) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        let name = name.to_str().unwrap();
        if entry.file_type().unwrap().is_dir() {
            copy_fixture(&entry.path(), &to.join(name), ignore_file);
        } else if name == "gitignore" {
            if ignore_file {
                std::fs::copy(entry.path(), to.join(".gitignore")).unwrap();
            }
        } else if name != "expect.json" {
            std::fs::copy(entry.path(), to.join(name)).unwrap();
        }
    }
}

fn build_at(
    builder: &ContextBuilder,
    index: &WorkspaceIndex,
    file: &Path,
    text: &str,
    offset: usize,
    tokens: usize,
) -> BuiltContext {
    let relative = index.relative_path(file);
    let cursor = Cursor {
        text,
        offset,
        relative: relative.as_deref(),
        language: languages::for_path(file),
        tree: TreeSource::Parse,
        heal_indentation: true,
    };
    let budget = Budget {
        tokens,
        suffix_lines: 20,
    };
    builder.build(Some(index), &cursor, budget, &[])
}

/// The prompt's length as the model's tokenizer encodes it.
fn exact_tokens(built: &BuiltContext) -> usize {
    tokenizer()
        .encode_prompt(&built.fill_in_middle_prompt())
        .expect("the prompt encodes")
        .len()
}

/// Everything in the prompt before the cursor's line: the blocks and the prefix up to that line.
fn before_cursor_line(built: &BuiltContext, text: &str, offset: usize) -> String {
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    // The prefix holds what was typed on the line, less the indentation it leaves to the model.
    let typed_on_line = offset - line_start - built.cut_indentation.len();
    let mut before: String = built.blocks.iter().map(|b| b.text.as_str()).collect();
    assert!(
        built.prefix.len() >= typed_on_line,
        "the prefix ends at the cursor"
    );
    before.push_str(&built.prefix[..built.prefix.len() - typed_on_line]);
    before
}

/// Fails with every problem found, one per line.
fn assert_none(problems: &[String]) {
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn every_fixture_marks_a_cursor_in_a_file_that_imports_what_it_needs() {
    for repo in all_repos() {
        assert!(
            repo.index.len() >= 3,
            "{}: indexed {}",
            repo.language,
            repo.index.len()
        );
        assert!(
            repo.index.file_by_path(&repo.file).is_some(),
            "{}: the cursor file is indexed",
            repo.language
        );
        for need in &repo.expect.needs {
            assert!(
                !repo.text.contains(need.as_str()),
                "{}: {need:?} is defined in another file, not the cursor file",
                repo.language
            );
            let defined_elsewhere = repo
                .index
                .files()
                .any(|f| f.path != repo.file && f.text.contains(need.as_str()));
            assert!(
                defined_elsewhere,
                "{}: {need:?} is in another indexed file",
                repo.language
            );
        }
        let decoy_name = repo.expect.decoy.split('(').next().unwrap();
        let decoy_name = decoy_name.rsplit(' ').next().unwrap();
        assert!(
            repo.text.contains(decoy_name),
            "{}: the cursor file calls the decoy {decoy_name}",
            repo.language
        );
        assert!(
            repo.index
                .files()
                .all(|f| !f.relative.contains("vendor_ignored")),
            "{}: the scan honours .gitignore",
            repo.language
        );
    }
}

/// The `needs` signatures the prompt at 2048 tokens lacks.
fn missing_needs(repo: &Repo) -> Vec<String> {
    let built = repo.build(&builder(), &repo.text, repo.offset, 2048);
    let prompt = built.text();
    repo.expect
        .needs
        .iter()
        .filter(|need| !prompt.contains(need.as_str()))
        .map(|need| {
            format!(
                "{}: the prompt at 2048 lacks {need:?}; blocks: {}",
                repo.language,
                serde_json::to_string(&built.blocks).unwrap()
            )
        })
        .collect()
}

#[test]
fn the_prompt_shows_the_cross_file_definition_the_cursor_needs() {
    let problems: Vec<String> = all_repos().iter().flat_map(missing_needs).collect();
    assert_none(&problems);
}

#[test]
fn ignored_files_never_reach_the_prompt_at_any_budget() {
    let mut problems = Vec::new();
    for repo in all_repos() {
        let builder = builder();
        for budget in BUDGETS {
            let built = repo.build(&builder, &repo.text, repo.offset, budget);
            if let Some(leak) = repo.leak(&built.text()) {
                problems.push(format!(
                    "{} at {budget}: the prompt shows {leak:?}",
                    repo.language
                ));
            }
            for block in &built.blocks {
                if block.path.contains("vendor_ignored") {
                    problems.push(format!(
                        "{} at {budget}: a block of {}",
                        repo.language, block.path
                    ));
                }
            }
        }
    }
    assert_none(&problems);
}

/// The control for the test above: the decoys are placed where a builder that read them would
/// show them.
#[test]
fn without_the_ignore_file_the_decoy_would_be_shown() {
    let mut problems = Vec::new();
    for (language, typed) in FIXTURES {
        let repo = Repo::open_with(language, typed, false);
        let built = repo.build(&builder(), &repo.text, repo.offset, 2048);
        if !built.text().contains(&repo.expect.decoy) {
            problems.push(format!(
                "{language}: with no .gitignore the decoy is not shown, so the ignore test proves nothing; blocks: {}",
                serde_json::to_string(&built.blocks).unwrap()
            ));
        }
    }
    assert_none(&problems);
}

#[test]
fn prompt_tokens_is_the_model_count_and_within_every_budget() {
    let mut problems = Vec::new();
    for repo in all_repos() {
        let builder = builder();
        for budget in BUDGETS {
            let built = repo.build(&builder, &repo.text, repo.offset, budget);
            let exact = exact_tokens(&built);
            if exact != built.prompt_tokens {
                problems.push(format!(
                    "{} at {budget}: prompt_tokens {} but the tokenizer counts {exact}",
                    repo.language, built.prompt_tokens
                ));
            }
            if exact > budget {
                problems.push(format!(
                    "{} at {budget}: {exact} tokens (prefix {:?}, suffix {:?}, {} blocks)",
                    repo.language,
                    built.prefix,
                    built.suffix,
                    built.blocks.len()
                ));
            }
        }
    }
    assert_none(&problems);
}

/// Types `line` at the repository's cursor one character at a time, building at 1024 tokens
/// after each keystroke; returns what changed before the cursor's line, or went over budget.
fn typing_problems(repo: &Repo, line: &str) -> Vec<String> {
    let builder = builder();
    let mut text = repo.text.clone();
    let mut offset = repo.offset;
    let first = repo.build(&builder, &text, offset, 1024);
    let expected = before_cursor_line(&first, &text, offset);
    let mut problems = Vec::new();
    for typed in line.chars() {
        text.insert(offset, typed);
        offset += typed.len_utf8();
        let built = repo.build(&builder, &text, offset, 1024);
        let typed_so_far = &line[..offset - repo.offset];
        if !built.prefix.ends_with(typed_so_far) {
            problems.push(format!(
                "{}: the prefix does not end with {typed_so_far:?}",
                repo.language
            ));
            break;
        }
        if exact_tokens(&built) > 1024 {
            problems.push(format!(
                "{}: over budget after {typed_so_far:?}",
                repo.language
            ));
        }
        let before = before_cursor_line(&built, &text, offset);
        if before != expected {
            let same = before
                .bytes()
                .zip(expected.bytes())
                .take_while(|(a, b)| a == b)
                .count();
            problems.push(format!(
                "{}: after typing {} characters ({typed_so_far:?}) the text before the line changed \
                 at byte {same} ({} bytes, was {}); blocks {} -> {}",
                repo.language,
                typed_so_far.chars().count(),
                before.len(),
                expected.len(),
                serde_json::to_string(&first.blocks).unwrap(),
                serde_json::to_string(&built.blocks).unwrap(),
            ));
            break;
        }
    }
    problems
}

#[test]
fn typing_a_line_never_changes_the_prompt_before_that_line() {
    let problems: Vec<String> = all_repos()
        .iter()
        .flat_map(|repo| typing_problems(repo, repo.typed))
        .collect();
    assert_none(&problems);
}

/// The same with the statement followed by a comment, a line of 80 to 100 characters: longer
/// than the growth room the builder first reserves for the cursor line.
#[test]
fn typing_a_long_line_never_changes_the_prompt_before_that_line() {
    let problems: Vec<String> = all_repos()
        .iter()
        .flat_map(|repo| {
            let comment = languages::for_path(&repo.file).unwrap().spec.line_comment;
            let line = format!(
                "{} {comment} in the units of the input, rounded later by the report",
                repo.typed
            );
            typing_problems(repo, &line)
        })
        .collect();
    assert_none(&problems);
}

#[test]
fn block_json_shows_path_kind_reason_and_tokens_but_no_text() {
    let tokenizer = tokenizer();
    for repo in all_repos() {
        let built = repo.build(&builder(), &repo.text, repo.offset, 2048);
        assert!(
            !built.blocks.is_empty(),
            "{}: no blocks at 2048",
            repo.language
        );
        let json = serde_json::to_value(&built.blocks).unwrap();
        let json = json.as_array().expect("the blocks are a list");
        assert_eq!(json.len(), built.blocks.len());
        for (value, block) in json.iter().zip(&built.blocks) {
            let object = value.as_object().expect("a block is an object");
            let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
            keys.sort_unstable();
            assert_eq!(
                keys,
                ["kind", "path", "reason", "tokens"],
                "{}",
                repo.language
            );
            assert_eq!(object["path"], block.path.as_str());
            assert!(object["kind"].is_string() && object["reason"].is_string());
            assert_eq!(object["tokens"], block.tokens);
            assert_eq!(
                block.tokens,
                tokenizer.count_text(&block.text).unwrap(),
                "{}: {} counts its text exactly",
                repo.language,
                block.path
            );
        }
    }
}

/// 200 Python modules, seven of which define a function of the same name as the one the cursor
/// file imports, and a cursor file of about 3000 lines.
fn large_python_repo() -> (tempfile::TempDir, PathBuf, String, usize) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let write = |path: &str, text: &str| {
        let full = root.join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, text).unwrap();
    };
    write("app/__init__.py", "");
    for i in 0..199 {
        let package = i % 10;
        let mut module = format!("\"\"\"Ledger helpers, part {i}.\"\"\"\n\n");
        for j in 0..6 {
            module.push_str(&format!(
                "\ndef step_{i}_{j}(balance: float, rate: float) -> float:\n    \
                 fee = balance * rate / {}\n    return round(balance - fee, 2)\n\n",
                j + 2
            ));
        }
        if i % 33 == 0 {
            module.push_str("\ndef compound_interest(amount, pct):\n    return amount * pct\n");
        }
        write(&format!("app/pkg{package}/mod{i:03}.py"), &module);
    }
    write(
        "app/billing/rates.py",
        "\"\"\"Interest rates.\"\"\"\n\n\ndef compound_interest(principal: float, rate: float, years: int) -> float:\n    \
         \"\"\"The balance after `years` of yearly compounding.\"\"\"\n    \
         return principal * (1.0 + rate) ** years\n",
    );
    let mut main = String::from(
        "\"\"\"The ledger's command line.\"\"\"\n\nfrom app.billing.rates import compound_interest\n\n\n",
    );
    for k in 0..580 {
        main.push_str(&format!(
            "def report_{k}(balance: float) -> str:\n    value = balance * {k}.5\n    return f\"{{value:.2f}}\"\n\n\n"
        ));
    }
    main.push_str("def forecast(principal: float, rate: float) -> list[float]:\n    values = []\n    for years in range(1, 11):\n        ");
    let offset = main.len();
    main.push_str("\n        values.append(balance)\n    return values\n");
    write("app/main.py", &main);
    (dir, root.join("app/main.py"), main, offset)
}

#[test]
fn a_large_repository_finds_the_imported_definition_and_anchors_the_prefix() {
    let (dir, file, text, offset) = large_python_repo();
    assert!(
        text.lines().count() >= 2900,
        "{} lines",
        text.lines().count()
    );
    let mut index = WorkspaceIndex::new(&[dir.path().to_path_buf()], ScanOptions::default());
    index.index_all(2, &|_, _| {});
    assert!(index.len() >= 200, "indexed {}", index.len());
    let builder = builder();
    let built = build_at(&builder, &index, &file, &text, offset, 4096);
    let prompt = built.text();
    assert!(
        prompt
            .contains("def compound_interest(principal: float, rate: float, years: int) -> float:"),
        "blocks: {}",
        serde_json::to_string(&built.blocks).unwrap()
    );
    assert!(
        built
            .blocks
            .iter()
            .any(|b| b.path == "app/billing/rates.py")
    );
    assert_eq!(exact_tokens(&built), built.prompt_tokens);
    assert!(built.prompt_tokens <= 4096, "{}", built.prompt_tokens);
    assert!(
        built.prefix_start_line > 0,
        "the file is longer than the budget"
    );
    assert_eq!(built.prefix_start_line % 64, 0);
    assert_eq!(ANCHOR_LINES, 64);
    assert!(built.prefix.starts_with("# app/main.py\n"));
}
