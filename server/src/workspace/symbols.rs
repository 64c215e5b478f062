//! What one file declares and uses, read from its syntax tree: definitions (with signature, doc
//! comment and a short snippet), imports, and references. Works for every row of the language
//! table through its queries; nothing here names a language.

use std::collections::HashSet;
use std::ops::Range;

use streaming_iterator::StreamingIterator;
use tree_sitter::{Node, Parser, QueryCursor, Tree};

use super::languages::Compiled;

/// A definition longer than this many lines is shown as its signature and its members'.
pub const SHORT_BODY_LINES: usize = 12;
/// A signature is cut after this many lines.
const SIGNATURE_LINES: usize = 6;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Definition {
    pub name: String,
    /// From the query: function, method, class, interface, type, module, macro, constant...
    pub kind: String,
    /// Lines of the definition, doc comment included (0-based, end exclusive).
    pub lines: Range<usize>,
    /// Bytes of the definition itself (without its doc comment).
    pub bytes: Range<usize>,
    /// The text up to its body: `def f(a, b) -> int:`, `pub fn f(&self) -> u32`.
    pub signature: String,
    /// The comment or docstring that documents it.
    pub doc: String,
    /// What a prompt shows of it: the doc comment and the whole text when short, else the
    /// signature and the signatures of the definitions inside it.
    pub snippet: String,
}

/// One import statement: where from, and which names it brings in.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Import {
    pub module: Option<String>,
    pub names: Vec<String>,
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub name: String,
    /// call, type, class, implementation...
    pub kind: String,
    pub line: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileSymbols {
    pub definitions: Vec<Definition>,
    pub imports: Vec<Import>,
    pub references: Vec<Reference>,
}

/// Parses `text`, reusing `old` (already `edit`ed) when given. `None` when the parser gives up
/// (it only does on cancellation or a grammar mismatch).
pub fn parse(language: &Compiled, text: &str, old: Option<&Tree>) -> Option<Tree> {
    let mut parser = Parser::new();
    parser.set_language(&language.language).ok()?;
    parser.parse(text, old)
}

/// Parses a rope chunk by chunk, reusing `old` (already `edit`ed) when given.
pub fn parse_rope(language: &Compiled, text: &ropey::Rope, old: Option<&Tree>) -> Option<Tree> {
    let mut parser = Parser::new();
    parser.set_language(&language.language).ok()?;
    let mut read = |byte: usize, _: tree_sitter::Point| -> &[u8] {
        if byte >= text.len_bytes() {
            return &[];
        }
        let (chunk, chunk_start, _, _) = text.chunk_at_byte(byte);
        &chunk.as_bytes()[byte - chunk_start..]
    };
    parser.parse_with_options(&mut read, old, None)
}

/// Everything the index keeps of one parsed file.
pub fn extract(language: &Compiled, tree: &Tree, text: &str) -> FileSymbols {
    let (definitions, references) = tags(language, tree, text, true);
    finish(
        language,
        definitions,
        imports(language, tree, text),
        references,
        text,
    )
}

/// Definitions and imports only (what a prompt needs of the current file).
pub fn extract_declarations(language: &Compiled, tree: &Tree, text: &str) -> FileSymbols {
    let (definitions, _) = tags(language, tree, text, false);
    finish(
        language,
        definitions,
        imports(language, tree, text),
        Vec::new(),
        text,
    )
}

fn finish(
    language: &Compiled,
    mut definitions: Vec<Definition>,
    imports: Vec<Import>,
    references: Vec<Reference>,
    text: &str,
) -> FileSymbols {
    definitions.sort_by_key(|d| d.bytes.start);
    add_member_outlines(&mut definitions, text, language.spec.line_comment);
    FileSymbols {
        definitions,
        imports,
        references,
    }
}

/// One pass of the tags query: definitions, and references when asked for.
fn tags(
    language: &Compiled,
    tree: &Tree,
    text: &str,
    with_references: bool,
) -> (Vec<Definition>, Vec<Reference>) {
    let Some(query) = language.tags() else {
        return (Vec::new(), Vec::new());
    };
    let names = query.capture_names();
    let mut cursor = QueryCursor::new();
    let mut matches = cursor.matches(query, tree.root_node(), text.as_bytes());
    let mut seen: HashSet<(usize, usize)> = HashSet::new();
    let mut definitions = Vec::new();
    let mut references = Vec::new();
    while let Some(m) = matches.next() {
        let mut name = None;
        let mut definition = None;
        let mut reference = None;
        for capture in m.captures {
            let capture_name = names[capture.index as usize];
            if capture_name == "name" {
                name = Some(capture.node);
            } else if let Some(kind) = capture_name.strip_prefix("definition.") {
                definition = Some((capture.node, kind));
            } else if let Some(kind) = capture_name.strip_prefix("reference.") {
                reference = Some(kind);
            }
        }
        let Some(name) = name else {
            continue;
        };
        let Some(name_text) = text.get(name.byte_range()) else {
            continue;
        };
        if let Some((node, kind)) = definition {
            let outer = outer_declaration(node);
            if seen.insert((outer.start_byte(), outer.end_byte())) {
                definitions.push(describe(outer, name_text, kind, text));
            }
        } else if let Some(kind) = reference
            && with_references
        {
            references.push(Reference {
                name: name_text.to_string(),
                kind: kind.to_string(),
                line: name.start_position().row,
            });
        }
    }
    (definitions, references)
}

/// Climbs from a captured node to the whole declaration a reader would quote: the C function
/// definition around its declarator, the decorators above a Python function, the `export` or
/// `const` around a JavaScript function.
fn outer_declaration(node: Node) -> Node {
    const WRAPPERS: &[&str] = &[
        "function_definition",
        "declaration",
        "field_declaration",
        "pointer_declarator",
        "reference_declarator",
        "function_declarator",
        "template_declaration",
        "decorated_definition",
        "export_statement",
        "lexical_declaration",
        "variable_declaration",
        "expression_statement",
        "ambient_declaration",
    ];
    let mut outer = node;
    while let Some(parent) = outer.parent() {
        let wraps_closely = parent.start_position().row + 2 >= node.start_position().row;
        if WRAPPERS.contains(&parent.kind()) && wraps_closely && parent.parent().is_some() {
            outer = parent;
        } else {
            break;
        }
    }
    outer
}

fn describe(node: Node, name: &str, kind: &str, text: &str) -> Definition {
    let body = body_of(node);
    let node_text = &text[node.byte_range()];
    let signature_end = body.map_or(node.end_byte(), |b| b.start_byte());
    let mut signature = text[node.start_byte()..signature_end]
        .trim_end()
        .to_string();
    if body.is_none() && signature.lines().count() > SIGNATURE_LINES {
        signature = first_lines(&signature, 1);
    }
    let signature = first_lines(&signature, SIGNATURE_LINES);
    let (doc, doc_start) = doc_comment(node, text);
    let doc = if doc.is_empty() {
        body.and_then(|b| docstring(b, text)).unwrap_or_default()
    } else {
        doc
    };
    let start_line = doc_start.map_or(node.start_position().row, |(row, _)| row);
    let end_line = node.end_position().row + 1;
    let indent = leading_indent(text, node.start_byte());
    let snippet = if end_line - node.start_position().row <= SHORT_BODY_LINES {
        format!("{indent}{node_text}")
    } else {
        format!("{indent}{signature}")
    };
    let snippet = match doc_start {
        Some((_, doc_line_start)) => {
            let doc_text = &text[doc_line_start..node.start_byte()];
            format!("{}{}", doc_text.trim_end_matches(' '), snippet.trim_start())
        }
        None => snippet,
    };
    Definition {
        name: name.to_string(),
        kind: kind.to_string(),
        lines: start_line..end_line,
        bytes: node.byte_range(),
        signature,
        doc,
        snippet,
    }
}

/// The child that holds the body, by the field name every grammar here uses.
fn body_of(node: Node) -> Option<Node> {
    if let Some(body) = node.child_by_field_name("body") {
        return Some(body);
    }
    // Through wrappers: `export function f() {}`, `@decorator def f():`, `const f = () => {}`.
    let mut cursor = node.walk();
    node.named_children(&mut cursor)
        .filter(|c| c.start_position().row <= node.start_position().row + 2)
        .find_map(|c| {
            c.child_by_field_name("body")
                .or_else(|| c.child_by_field_name("definition").and_then(body_of))
                .or_else(|| c.child_by_field_name("value").and_then(body_of))
                .or_else(|| c.child_by_field_name("declaration").and_then(body_of))
        })
}

/// Comments right above a node, with no blank line between: the doc comment of Rust, Go, Java,
/// JavaScript, C. Returns the text and where its first line starts (row, byte).
fn doc_comment(node: Node, text: &str) -> (String, Option<(usize, usize)>) {
    let mut start = None;
    let mut expected_row = node.start_position().row;
    let mut sibling = node.prev_sibling();
    while let Some(s) = sibling {
        if !s.kind().contains("comment") || s.end_position().row + 1 < expected_row {
            break;
        }
        start = Some(s);
        expected_row = s.start_position().row;
        sibling = s.prev_sibling();
    }
    match start {
        Some(first) => (
            text[first.start_byte()..node.start_byte()]
                .trim()
                .to_string(),
            // Tree-sitter columns count bytes: the line starts `column` bytes before.
            Some((
                first.start_position().row,
                first.start_byte() - first.start_position().column,
            )),
        ),
        None => (String::new(), None),
    }
}

/// A Python docstring: the string that opens a body.
fn docstring(body: Node, text: &str) -> Option<String> {
    let first = body.named_child(0)?;
    let string = if first.kind() == "expression_statement" {
        first.named_child(0)?
    } else {
        first
    };
    (string.kind() == "string").then(|| text[string.byte_range()].to_string())
}

/// For definitions shown as a signature only, the signatures of the definitions inside them
/// (a long class becomes its header and its methods' headers).
fn add_member_outlines(definitions: &mut [Definition], text: &str, comment: &str) {
    let spans: Vec<(Range<usize>, String, usize)> = definitions
        .iter()
        .map(|d| {
            let indent = leading_indent(text, d.bytes.start);
            (
                d.bytes.clone(),
                format!("{indent}{}", one_line(&d.signature)),
                d.lines.len(),
            )
        })
        .collect();
    for (i, definition) in definitions.iter_mut().enumerate() {
        let (outer, _, lines) = &spans[i];
        if *lines <= SHORT_BODY_LINES {
            continue;
        }
        let members: Vec<&str> = spans
            .iter()
            .enumerate()
            .filter(|(j, (inner, _, _))| {
                *j != i && inner.start > outer.start && inner.end <= outer.end
            })
            .map(|(_, (_, signature, _))| signature.as_str())
            .collect();
        let indent = leading_indent(text, outer.start);
        let mut snippet = definition.snippet.clone();
        for member in members {
            snippet.push('\n');
            snippet.push_str(member);
        }
        snippet.push_str(&format!("\n{indent}    {comment} ..."));
        definition.snippet = snippet;
    }
}

fn imports(language: &Compiled, tree: &Tree, text: &str) -> Vec<Import> {
    let Some(query) = language.imports() else {
        return Vec::new();
    };
    let names = query.capture_names();
    let mut cursor = QueryCursor::new();
    let mut matches = cursor.matches(query, tree.root_node(), text.as_bytes());
    // Patterns match parts of one statement separately; gather them by statement.
    let mut by_statement: Vec<((usize, usize), Import)> = Vec::new();
    while let Some(m) = matches.next() {
        for capture in m.captures {
            let role = names[capture.index as usize];
            if role.starts_with('_') {
                continue;
            }
            let statement = statement_of(capture.node);
            let key = (statement.start_byte(), statement.end_byte());
            let index = match by_statement.iter().position(|(k, _)| *k == key) {
                Some(index) => index,
                None => {
                    by_statement.push((
                        key,
                        Import {
                            line: statement.start_position().row,
                            ..Import::default()
                        },
                    ));
                    by_statement.len() - 1
                }
            };
            let value = text[capture.node.byte_range()]
                .trim_matches(|c| matches!(c, '"' | '\'' | '<' | '>' | '`'))
                .to_string();
            let import = &mut by_statement[index].1;
            match role {
                "module" if import.module.is_none() => import.module = Some(value),
                "name" if !import.names.contains(&value) => import.names.push(value),
                _ => {}
            }
        }
    }
    by_statement.into_iter().map(|(_, import)| import).collect()
}

/// The statement an import capture belongs to.
fn statement_of(node: Node) -> Node {
    const STATEMENTS: &[&str] = &[
        "import_statement",
        "import_from_statement",
        "future_import_statement",
        "import_declaration",
        "import_spec",
        "use_declaration",
        "preproc_include",
        "mod_item",
        "call_expression",
    ];
    let mut current = node;
    while !STATEMENTS.contains(&current.kind()) {
        match current.parent() {
            Some(parent) => current = parent,
            None => return node,
        }
    }
    current
}

/// Identifiers (of every kind the grammar has: plain, type, field, property...) in a byte range,
/// with their lines, in text order.
pub fn identifiers_in(tree: &Tree, text: &str, range: Range<usize>) -> Vec<(String, usize)> {
    let mut found = Vec::new();
    let mut cursor = tree.walk();
    let mut stack = vec![tree.root_node()];
    while let Some(node) = stack.pop() {
        if node.end_byte() <= range.start || node.start_byte() >= range.end {
            continue;
        }
        if node.child_count() == 0 {
            if node.is_named()
                && node.kind().ends_with("identifier")
                && let Some(name) = text.get(node.byte_range())
            {
                found.push((name.to_string(), node.start_position().row));
            }
            continue;
        }
        let children: Vec<Node> = node.children(&mut cursor).collect();
        stack.extend(children.into_iter().rev());
    }
    found
}

/// Byte range of the smallest function- or class-like node that contains `line` (starting at
/// byte `line_start`) without starting on it.
pub fn enclosing_scope(tree: &Tree, line: usize, line_start: usize) -> Option<Range<usize>> {
    let mut node = tree
        .root_node()
        .descendant_for_byte_range(line_start, line_start)?;
    loop {
        if crate::syntax::is_function_like(node.kind()) && node.start_position().row < line {
            return Some(node.byte_range());
        }
        node = node.parent()?;
    }
}

/// A signature on one line: its lines joined, runs of whitespace made one space, no space
/// after an opening or before a closing bracket (`def f(\n    a,\n) -> T:` -> `def f(a,) -> T:`).
pub fn one_line(signature: &str) -> String {
    let mut out = String::with_capacity(signature.len());
    for word in signature.split_whitespace() {
        let glue = out.ends_with(['(', '[', '{']) || word.starts_with([')', ']', '}']);
        if !out.is_empty() && !glue {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

fn first_lines(text: &str, count: usize) -> String {
    text.lines().take(count).collect::<Vec<_>>().join("\n")
}

/// The whitespace between the start of the line and `offset`, when only whitespace is there.
fn leading_indent(text: &str, offset: usize) -> &str {
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let before = &text[line_start..offset];
    if before.chars().all(|c| c == ' ' || c == '\t') {
        before
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::super::languages::by_name;
    use super::*;

    fn symbols(language: &str, text: &str) -> FileSymbols {
        let language = by_name(language).unwrap();
        let tree = parse(language, text, None).unwrap();
        extract(language, &tree, text)
    }

    fn names(symbols: &FileSymbols) -> Vec<(&str, &str)> {
        symbols
            .definitions
            .iter()
            .map(|d| (d.name.as_str(), d.kind.as_str()))
            .collect()
    }

    #[test]
    fn rust_definitions_have_signatures_docs_and_no_duplicates() {
        let text = "use crate::util::{parse, Token};\n\n/// Adds.\n/// Twice.\npub fn add(a: i32) -> i32 {\n    a + 1\n}\n\nstruct S;\nimpl S {\n    fn get(&self) -> u8 { 1 }\n}\n";
        let s = symbols("rust", text);
        assert_eq!(
            names(&s),
            [("add", "function"), ("S", "class"), ("get", "method")]
        );
        let add = &s.definitions[0];
        assert_eq!(add.signature, "pub fn add(a: i32) -> i32");
        assert_eq!(add.doc, "/// Adds.\n/// Twice.");
        assert_eq!(add.lines, 2..7);
        assert!(add.snippet.starts_with("/// Adds.\n/// Twice.\npub fn add"));
        assert!(add.snippet.ends_with("a + 1\n}"));
        assert_eq!(
            s.imports,
            [Import {
                module: Some("crate::util".into()),
                names: vec!["parse".into(), "Token".into()],
                line: 0
            }]
        );
    }

    #[test]
    fn python_imports_group_by_statement_and_docstrings_are_docs() {
        let text = "import os.path\nfrom .models import User, Group as G\n\n@cache\ndef load(path: str) -> User:\n    \"\"\"Loads a user.\"\"\"\n    return User(path)\n";
        let s = symbols("python", text);
        assert_eq!(
            s.imports,
            [
                Import {
                    module: Some("os.path".into()),
                    names: vec![],
                    line: 0
                },
                Import {
                    module: Some(".models".into()),
                    names: vec!["User".into(), "Group".into()],
                    line: 1
                }
            ]
        );
        let load = &s.definitions[0];
        assert_eq!(load.signature, "@cache\ndef load(path: str) -> User:");
        assert_eq!(load.doc, "\"\"\"Loads a user.\"\"\"");
        assert!(
            s.references
                .iter()
                .any(|r| r.name == "User" && r.kind == "call")
        );
    }

    #[test]
    fn long_definitions_show_their_members_signatures() {
        let body: String = (0..20).map(|i| format!("        x{i} = {i}\n")).collect();
        let text = format!(
            "class Big:\n    def a(self, x):\n{body}        return x\n\n    def b(self):\n        pass\n"
        );
        let s = symbols("python", &text);
        let big = s.definitions.iter().find(|d| d.name == "Big").unwrap();
        assert_eq!(
            big.snippet,
            "class Big:\n    def a(self, x):\n    def b(self):\n    # ..."
        );
    }

    #[test]
    fn c_functions_are_quoted_whole_and_referenced() {
        let text = "#include \"util.h\"\n/* Sums. */\nstatic int sum(int *v, int n) {\n    return helper(v, n);\n}\n";
        let s = symbols("c", text);
        assert_eq!(names(&s), [("sum", "function")]);
        assert_eq!(s.definitions[0].signature, "static int sum(int *v, int n)");
        assert_eq!(s.definitions[0].doc, "/* Sums. */");
        assert_eq!(s.imports[0].module.as_deref(), Some("util.h"));
        assert!(s.references.iter().any(|r| r.name == "helper"));
    }

    #[test]
    fn typescript_reads_javascript_and_typescript_tags() {
        let text = "import { Repo } from './repo';\nexport interface Store { get(id: string): Repo }\nexport class Cache {\n  size(): number { return 0 }\n}\nexport function make(): Cache { return new Cache() }\n";
        let s = symbols("typescript", text);
        let found = names(&s);
        for expected in [
            ("Store", "interface"),
            ("Cache", "class"),
            ("size", "method"),
            ("make", "function"),
        ] {
            assert!(found.contains(&expected), "{expected:?} in {found:?}");
        }
        assert_eq!(s.imports[0].module.as_deref(), Some("./repo"));
        assert_eq!(s.imports[0].names, ["Repo"]);
    }

    #[test]
    fn go_java_and_cpp_definitions_are_found() {
        let go = symbols(
            "go",
            "package p\nimport \"example.com/m/util\"\n// Run runs.\nfunc Run(n int) error {\n\treturn util.Do(n)\n}\n",
        );
        assert_eq!(names(&go), [("Run", "function")]);
        assert_eq!(go.definitions[0].doc, "// Run runs.");
        assert_eq!(go.imports[0].module.as_deref(), Some("example.com/m/util"));
        let java = symbols(
            "java",
            "import com.acme.util.Strings;\nclass A {\n  int f(int x) { return Strings.len(x); }\n}\n",
        );
        assert_eq!(names(&java), [("A", "class"), ("f", "method")]);
        assert_eq!(java.imports[0].names, ["Strings"]);
        let cpp = symbols(
            "cpp",
            "namespace n {\nclass W {\n public:\n  int g() const;\n};\nint W::g() const { return 1; }\n}\n",
        );
        let found = names(&cpp);
        assert!(found.contains(&("W", "class")), "{found:?}");
        assert!(found.iter().any(|(n, _)| *n == "g"), "{found:?}");
    }

    #[test]
    fn identifiers_and_scopes_come_from_the_tree() {
        let text = "fn a() {}\nfn b(x: Foo) -> u8 {\n    let y = helper(x);\n    y\n}\n";
        let language = by_name("rust").unwrap();
        let tree = parse(language, text, None).unwrap();
        let line_3 = text.match_indices('\n').nth(2).unwrap().0 + 1;
        let scope = enclosing_scope(&tree, 3, line_3).unwrap();
        assert!(text[scope.clone()].starts_with("fn b"));
        let names: Vec<String> = identifiers_in(&tree, text, scope)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, ["b", "x", "Foo", "y", "helper", "x", "y"]);
    }
}
