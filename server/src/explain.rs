//! "Explain this code": a chat prompt around a range of lines.

use engine::Prompt;

/// The instruction given with the code.
const INSTRUCTION: &str = "Explain what the following code does: its purpose, how it works, and anything \
surprising. Be precise and brief.";

/// Language name for the code fence, from the file extension.
pub fn fence_language(path: &str) -> &'static str {
    let extension = path.rsplit_once('.').map_or("", |(_, e)| e);
    match extension {
        "rs" => "rust",
        "py" | "pyi" => "python",
        "ts" | "mts" | "cts" => "typescript",
        "tsx" => "tsx",
        "js" | "mjs" | "cjs" | "jsx" => "javascript",
        "go" => "go",
        "java" => "java",
        "c" | "h" => "c",
        "cc" | "cpp" | "cxx" | "hpp" | "hh" | "hxx" => "cpp",
        _ => "",
    }
}

/// The chat prompt explaining `code`, which is lines `first..=last` (1-based) of `path`.
pub fn explain_prompt(path: &str, first: usize, last: usize, code: &str) -> Prompt {
    let language = fence_language(path);
    let code = code.strip_suffix('\n').unwrap_or(code);
    let user =
        format!("{INSTRUCTION}\n\n{path}, lines {first}-{last}:\n```{language}\n{code}\n```");
    Prompt::chat(None, &user)
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::prompt::PromptPart;

    #[test]
    fn the_prompt_fences_the_code_with_its_language_and_place() {
        let prompt = explain_prompt("src/lib.rs", 3, 4, "fn a() {}\nfn b() {}\n");
        let [PromptPart::Text { text, .. }] = prompt.parts() else {
            panic!("one chat part")
        };
        assert!(text.starts_with("User: Explain what the following code does"));
        assert!(text.contains("src/lib.rs, lines 3-4:\n```rust\nfn a() {}\nfn b() {}\n```"));
        assert!(text.ends_with("\n\nAssistant:"));
    }

    #[test]
    fn unknown_extensions_get_a_plain_fence() {
        assert_eq!(fence_language("Makefile"), "");
        assert_eq!(fence_language("a.tsx"), "tsx");
    }
}
