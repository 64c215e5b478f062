//! The languages the workspace index reads, one table row each: how files are recognised, the
//! grammar, the queries that find definitions, references and imports, and how a comment is
//! written. Adding a language means adding a row here; nothing else names a language.

use std::path::Path;
use std::sync::{LazyLock, OnceLock};

use tree_sitter::{Language, Query};

/// One language as a row of data.
pub struct LanguageSpec {
    /// Our name for it (also used in `deepseek-lsp context --json`).
    pub name: &'static str,
    /// LSP language ids that mean this language.
    pub lsp_ids: &'static [&'static str],
    /// File name endings, without the dot.
    pub extensions: &'static [&'static str],
    grammar: fn() -> Language,
    /// `tags.scm`-style queries (`@name` with `@definition.KIND` / `@reference.KIND`),
    /// concatenated: the grammar crate's own, plus ours where it lacks some.
    tags: &'static [&'static str],
    /// Captures `@module` (what is imported from: a path or module name) and `@name` (a name
    /// brought into scope).
    imports: &'static str,
    /// How a line comment starts, for the path header of context blocks.
    pub line_comment: &'static str,
    /// Languages whose code calls each other's definitions share a family (C with C++,
    /// JavaScript with TypeScript); definitions from another family are not offered as context.
    pub family: &'static str,
}

/// References for C and C++, whose grammar crates ship definitions only.
const C_REFERENCES: &str = r#"
(call_expression function: (identifier) @name) @reference.call
(call_expression function: (field_expression field: (field_identifier) @name)) @reference.call
(type_identifier) @name @reference.type
"#;

const CPP_REFERENCES: &str = r#"
(call_expression function: (qualified_identifier name: (identifier) @name)) @reference.call
(namespace_identifier) @name @reference.module
"#;

const C_INCLUDES: &str = r#"
(preproc_include path: (string_literal) @module)
(preproc_include path: (system_lib_string) @module)
"#;

const RUST_IMPORTS: &str = r#"
(use_declaration argument: (identifier) @module)
(use_declaration argument: (scoped_identifier path: (_) @module name: (identifier) @name))
(use_declaration argument: (use_as_clause path: (scoped_identifier path: (_) @module name: (identifier) @name)))
(use_declaration argument: (scoped_use_list path: (_) @module list: (use_list [(identifier) @name (scoped_identifier name: (identifier) @name)])))
(use_declaration argument: (use_wildcard (_) @module))
(mod_item name: (identifier) @module !body)
"#;

const PYTHON_IMPORTS: &str = r#"
(import_statement name: (dotted_name) @module)
(import_statement name: (aliased_import name: (dotted_name) @module))
(import_from_statement module_name: (_) @module)
(import_from_statement name: (dotted_name) @name)
(import_from_statement name: (aliased_import name: (dotted_name) @name))
"#;

const JS_IMPORTS: &str = r#"
(import_statement source: (string (string_fragment) @module))
(import_statement (import_clause (identifier) @name))
(import_statement (import_clause (named_imports (import_specifier name: (identifier) @name))))
(call_expression function: (identifier) @_require arguments: (arguments (string (string_fragment) @module)) (#eq? @_require "require"))
"#;

const GO_IMPORTS: &str = r#"
(import_spec path: (_) @module)
"#;

const JAVA_IMPORTS: &str = r#"
(import_declaration (scoped_identifier name: (identifier) @name) @module)
"#;

pub static LANGUAGES: &[LanguageSpec] = &[
    LanguageSpec {
        name: "rust",
        family: "rust",
        lsp_ids: &["rust"],
        extensions: &["rs"],
        grammar: || tree_sitter_rust::LANGUAGE.into(),
        tags: &[tree_sitter_rust::TAGS_QUERY],
        imports: RUST_IMPORTS,
        line_comment: "//",
    },
    LanguageSpec {
        name: "python",
        family: "python",
        lsp_ids: &["python"],
        extensions: &["py", "pyi"],
        grammar: || tree_sitter_python::LANGUAGE.into(),
        tags: &[tree_sitter_python::TAGS_QUERY],
        imports: PYTHON_IMPORTS,
        line_comment: "#",
    },
    LanguageSpec {
        name: "javascript",
        family: "js",
        lsp_ids: &["javascript", "javascriptreact"],
        extensions: &["js", "jsx", "mjs", "cjs"],
        grammar: || tree_sitter_javascript::LANGUAGE.into(),
        tags: &[tree_sitter_javascript::TAGS_QUERY],
        imports: JS_IMPORTS,
        line_comment: "//",
    },
    LanguageSpec {
        name: "typescript",
        family: "js",
        lsp_ids: &["typescript"],
        extensions: &["ts", "mts", "cts"],
        grammar: || tree_sitter_typescript::LANGUAGE_TYPESCRIPT.into(),
        tags: &[
            tree_sitter_javascript::TAGS_QUERY,
            tree_sitter_typescript::TAGS_QUERY,
        ],
        imports: JS_IMPORTS,
        line_comment: "//",
    },
    LanguageSpec {
        name: "tsx",
        family: "js",
        lsp_ids: &["typescriptreact"],
        extensions: &["tsx"],
        grammar: || tree_sitter_typescript::LANGUAGE_TSX.into(),
        tags: &[
            tree_sitter_javascript::TAGS_QUERY,
            tree_sitter_typescript::TAGS_QUERY,
        ],
        imports: JS_IMPORTS,
        line_comment: "//",
    },
    LanguageSpec {
        name: "go",
        family: "go",
        lsp_ids: &["go"],
        extensions: &["go"],
        grammar: || tree_sitter_go::LANGUAGE.into(),
        tags: &[tree_sitter_go::TAGS_QUERY],
        imports: GO_IMPORTS,
        line_comment: "//",
    },
    LanguageSpec {
        name: "java",
        family: "java",
        lsp_ids: &["java"],
        extensions: &["java"],
        grammar: || tree_sitter_java::LANGUAGE.into(),
        tags: &[tree_sitter_java::TAGS_QUERY],
        imports: JAVA_IMPORTS,
        line_comment: "//",
    },
    LanguageSpec {
        name: "c",
        family: "c",
        lsp_ids: &["c"],
        extensions: &["c", "h"],
        grammar: || tree_sitter_c::LANGUAGE.into(),
        tags: &[tree_sitter_c::TAGS_QUERY, C_REFERENCES],
        imports: C_INCLUDES,
        line_comment: "//",
    },
    LanguageSpec {
        name: "cpp",
        family: "c",
        lsp_ids: &["cpp"],
        extensions: &["cc", "cpp", "cxx", "c++", "hh", "hpp", "hxx", "h++", "ipp"],
        grammar: || tree_sitter_cpp::LANGUAGE.into(),
        tags: &[tree_sitter_cpp::TAGS_QUERY, C_REFERENCES, CPP_REFERENCES],
        imports: C_INCLUDES,
        line_comment: "//",
    },
];

/// A row with its grammar loaded; its queries compile on first use (compiling all of them
/// costs hundreds of milliseconds, which opening one file should not pay).
pub struct Compiled {
    pub spec: &'static LanguageSpec,
    pub language: Language,
    queries: OnceLock<Option<(Query, Query)>>,
}

impl Compiled {
    /// Whether code in this language calls definitions written in `other`.
    pub fn same_family(&self, other: &Compiled) -> bool {
        self.spec.family == other.spec.family
    }

    /// The tags query (definitions and references); `None` only if the table's query does not
    /// compile against the grammar, a bug the tests catch (logged once).
    pub fn tags(&self) -> Option<&Query> {
        self.queries().map(|(tags, _)| tags)
    }

    /// The imports query.
    pub fn imports(&self) -> Option<&Query> {
        self.queries().map(|(_, imports)| imports)
    }

    fn queries(&self) -> Option<&(Query, Query)> {
        self.queries
            .get_or_init(|| match compile_queries(self.spec, &self.language) {
                Ok(queries) => Some(queries),
                Err(e) => {
                    tracing::error!("the {} queries do not compile: {e}", self.spec.name);
                    None
                }
            })
            .as_ref()
    }
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Compiled({})", self.spec.name)
    }
}

static COMPILED: LazyLock<Vec<Compiled>> = LazyLock::new(|| {
    LANGUAGES
        .iter()
        .map(|spec| Compiled {
            spec,
            language: (spec.grammar)(),
            queries: OnceLock::new(),
        })
        .collect()
});

fn compile_queries(spec: &LanguageSpec, language: &Language) -> Result<(Query, Query), String> {
    let tags = Query::new(language, &spec.tags.concat()).map_err(|e| format!("tags: {e}"))?;
    let imports = Query::new(language, spec.imports).map_err(|e| format!("imports: {e}"))?;
    Ok((tags, imports))
}

fn compiled_at(index: usize) -> Option<&'static Compiled> {
    COMPILED.get(index)
}

/// The language of an LSP language id.
pub fn for_lsp_id(lsp_id: &str) -> Option<&'static Compiled> {
    let index = LANGUAGES.iter().position(|l| l.lsp_ids.contains(&lsp_id))?;
    compiled_at(index)
}

/// The language of a file, by its name's ending.
pub fn for_path(path: &Path) -> Option<&'static Compiled> {
    let extension = path.extension()?.to_str()?;
    let index = LANGUAGES.iter().position(|l| {
        l.extensions
            .iter()
            .any(|e| e.eq_ignore_ascii_case(extension))
    })?;
    compiled_at(index)
}

/// The language called `name` in the table.
pub fn by_name(name: &str) -> Option<&'static Compiled> {
    let index = LANGUAGES.iter().position(|l| l.name == name)?;
    compiled_at(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_compiles_against_its_grammar() {
        for spec in LANGUAGES {
            if let Err(e) = compile_queries(spec, &(spec.grammar)()) {
                panic!("{}: {e}", spec.name);
            }
        }
    }

    #[test]
    fn files_and_lsp_ids_find_their_row() {
        assert_eq!(for_path(Path::new("a/b.rs")).unwrap().spec.name, "rust");
        assert_eq!(for_path(Path::new("x.TSX")).unwrap().spec.name, "tsx");
        assert_eq!(for_path(Path::new("m.hpp")).unwrap().spec.name, "cpp");
        assert!(for_path(Path::new("README.md")).is_none());
        assert_eq!(for_lsp_id("typescriptreact").unwrap().spec.name, "tsx");
        assert!(for_lsp_id("cobol").is_none());
    }
}
