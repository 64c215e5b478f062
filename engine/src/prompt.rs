//! Prompts as named parts, so callers can say what each piece is (repository context, the file
//! before the cursor, the suffix) and later layers can order them for the prefix cache.

/// A special token a prompt can contain, resolved to an id by the tokenizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Special {
    FimBegin,
    FimHole,
    FimEnd,
    Eos,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PromptPart {
    /// Text, tokenized on its own. `name` says what it is (for `deepseek-lsp context` and logs).
    Text {
        name: String,
        text: String,
    },
    Special(Special),
}

/// A sequence of parts. The tokenizer adds BOS in front.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prompt {
    parts: Vec<PromptPart>,
}

/// A named block of text placed before the file prefix (for example another file of the repository).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextBlock {
    pub name: String,
    pub text: String,
}

impl Prompt {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn text(mut self, name: &str, text: impl Into<String>) -> Self {
        let text = text.into();
        if !text.is_empty() {
            self.parts.push(PromptPart::Text {
                name: name.to_string(),
                text,
            });
        }
        self
    }

    pub fn special(mut self, special: Special) -> Self {
        self.parts.push(PromptPart::Special(special));
        self
    }

    pub fn parts(&self) -> &[PromptPart] {
        &self.parts
    }

    /// Fill-in-the-middle in PSM order:
    /// `<｜fim▁begin｜>` context blocks, prefix `<｜fim▁hole｜>` suffix `<｜fim▁end｜>`.
    pub fn fill_in_middle(context: &[ContextBlock], prefix: &str, suffix: &str) -> Self {
        let mut prompt = Self::new().special(Special::FimBegin);
        for block in context {
            prompt = prompt.text(&block.name, block.text.clone());
        }
        prompt
            .text("prefix", prefix)
            .special(Special::FimHole)
            .text("suffix", suffix)
            .special(Special::FimEnd)
    }

    /// For a model without FIM tokens: context blocks and the text before the cursor only.
    pub fn prefix_only(context: &[ContextBlock], prefix: &str) -> Self {
        let mut prompt = Self::new();
        for block in context {
            prompt = prompt.text(&block.name, block.text.clone());
        }
        prompt.text("prefix", prefix)
    }

    /// DeepSeek-V2's chat format for instruction models, as its chat template renders one user
    /// turn: `[system\n\n]User: {user}\n\nAssistant:`. One text part, because the template is
    /// tokenized as a whole.
    pub fn chat(system: Option<&str>, user: &str) -> Self {
        let mut text = String::new();
        if let Some(system) = system {
            text.push_str(system);
            text.push_str("\n\n");
        }
        text.push_str("User: ");
        text.push_str(user);
        text.push_str("\n\nAssistant:");
        Self::new().text("chat", text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(prompt: &Prompt) -> Vec<String> {
        prompt
            .parts()
            .iter()
            .map(|p| match p {
                PromptPart::Text { name, .. } => name.clone(),
                PromptPart::Special(s) => format!("{s:?}"),
            })
            .collect()
    }

    #[test]
    fn fill_in_middle_is_psm_with_context_before_the_prefix() {
        let context = [ContextBlock {
            name: "src/util.rs".into(),
            text: "// util\n".into(),
        }];
        let prompt = Prompt::fill_in_middle(&context, "fn a() {", "}\n");
        assert_eq!(
            names(&prompt),
            [
                "FimBegin",
                "src/util.rs",
                "prefix",
                "FimHole",
                "suffix",
                "FimEnd"
            ]
        );
    }

    #[test]
    fn empty_text_parts_are_left_out() {
        let prompt = Prompt::fill_in_middle(&[], "", "");
        assert_eq!(names(&prompt), ["FimBegin", "FimHole", "FimEnd"]);
    }

    #[test]
    fn chat_renders_the_deepseek_v2_template() {
        let with_system = Prompt::chat(Some("Be brief."), "Explain x");
        assert_eq!(
            with_system.parts(),
            [PromptPart::Text {
                name: "chat".into(),
                text: "Be brief.\n\nUser: Explain x\n\nAssistant:".into()
            }]
        );
        let plain = Prompt::chat(None, "hi");
        assert_eq!(
            plain.parts(),
            [PromptPart::Text {
                name: "chat".into(),
                text: "User: hi\n\nAssistant:".into()
            }]
        );
    }
}
