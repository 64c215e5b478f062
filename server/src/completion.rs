//! A completion at a cursor: the text around it becomes a fill-in-the-middle request.

use engine::{Engine, PromptInput, Request, SamplingParams};

use crate::position::{PositionError, byte_offset};

/// What the caller wants from one completion.
#[derive(Debug, Clone)]
pub struct CompletionOptions {
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
}

/// The request completing `text` at (`line`, `column`): the text before the cursor is the
/// prefix, the text after it the suffix.
pub fn completion_request(
    engine: &Engine,
    text: &str,
    line: usize,
    column: usize,
    options: &CompletionOptions,
) -> Result<Request, PositionError> {
    let cursor = byte_offset(text, line, column)?;
    let prompt = engine.completion_prompt(&[], &text[..cursor], &text[cursor..]);
    let mut request = Request::new(PromptInput::Prompt(prompt), options.max_new_tokens);
    request.sampling = options.sampling;
    request.stop = options.stop.clone();
    Ok(request)
}
