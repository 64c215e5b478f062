//! Code actions (explain, document, fix the diagnostics, write a test) and the explain request.
//!
//! Actions that edit come back as a `WorkspaceEdit`: computed when the client resolves the action
//! (`codeAction/resolve`), or, for clients without lazy resolution, by `workspace/executeCommand`
//! which applies it with `workspace/applyEdit`. Explanations stream as `$/progress` reports when
//! the client gives a work-done token.

use std::collections::HashMap;

use engine::{GenerationEvent, Prompt, PromptInput, Request};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tower_lsp_server::gen_lsp_types::*;
use tower_lsp_server::jsonrpc::{Error, ErrorCode, Result};

use super::backend::{Backend, invalid_params};
use super::model_host::ModelState;
use crate::documents::Document;
use crate::explain::{explain_prompt, fence_language};
use crate::syntax::{enclosing_function, indent_width};

pub const EXPLAIN: &str = "deepseek.explain";
pub const APPLY: &str = "deepseek.applyAction";
pub const COMMANDS: &[&str] = &[EXPLAIN, APPLY];

/// What an editing action does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ActionKind {
    Document,
    Fix,
    Test,
}

/// Carried in an action's `data` (or command arguments) until it is resolved.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ActionData {
    pub action: ActionKind,
    pub uri: Uri,
    pub range: Range,
    #[serde(default)]
    pub problems: Vec<String>,
}

/// `deepseek/explain` parameters.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExplainParams {
    pub text_document: TextDocumentIdentifier,
    pub range: Range,
    #[serde(default)]
    pub work_done_token: Option<ProgressToken>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ExplainResult {
    pub markdown: String,
}

/// The code an action works on: the selection's whole lines, or for an empty selection the
/// function around the cursor (or its line when there is none).
fn target(backend: &Backend, document: &Document, range: Range) -> Result<Range> {
    let start = backend.offset(document, range.start)?;
    let end = backend.offset(document, range.end)?;
    if end < start {
        return Err(invalid_params("the range ends before it starts".into()));
    }
    let text = &document.text;
    let (start, end) = if start == end {
        enclosing_function(text, start, &document.language_id).unwrap_or_else(|| {
            let line = text.byte_to_line(start);
            (text.line_to_byte(line), line_end(document, line))
        })
    } else {
        let first = text.byte_to_line(start);
        let last = text.byte_to_line(end.saturating_sub(1).max(start));
        (text.line_to_byte(first), line_end(document, last))
    };
    Ok(Range {
        start: backend.position(document, start),
        end: backend.position(document, end),
    })
}

/// Byte offset of the end of `line`, before its line break.
fn line_end(document: &Document, line: usize) -> usize {
    let text = &document.text;
    let content = text.line(line).to_string();
    text.line_to_byte(line) + content.trim_end_matches(['\n', '\r']).len()
}

/// LSP's RequestFailed: the request was valid but could not be served; the message says why.
fn request_failed(message: impl Into<String>) -> Error {
    Error {
        code: ErrorCode::ServerError(-32803),
        message: message.into().into(),
        data: None,
    }
}

pub fn code_actions(
    backend: &Backend,
    params: CodeActionParams,
) -> Result<Vec<CodeActionResponse>> {
    let document = backend.document(&params.text_document.uri)?;
    let range = target(backend, &document, params.range)?;
    let uri = params.text_document.uri;
    let lazy = backend
        .flags
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .code_action_resolve;
    let explain = CodeAction {
        title: "Explain with DeepSeek".into(),
        kind: Some(CodeActionKind::Empty),
        command: Some(Command {
            title: "Explain with DeepSeek".into(),
            command: EXPLAIN.into(),
            arguments: Some(vec![json!({"textDocument": {"uri": uri}, "range": range})]),
            tooltip: None,
        }),
        ..Default::default()
    };
    let mut actions = vec![CodeActionResponse::from(explain)];
    let editing = |title: &str,
                   kind: CodeActionKind,
                   action: ActionKind,
                   problems: Vec<String>,
                   diagnostics| {
        let data = ActionData {
            action,
            uri: uri.clone(),
            range,
            problems,
        };
        let data = serde_json::to_value(&data).expect("plain data serialises");
        let mut code_action = CodeAction {
            title: title.into(),
            kind: Some(kind),
            diagnostics,
            ..Default::default()
        };
        if lazy {
            code_action.data = Some(data);
        } else {
            code_action.command = Some(Command {
                title: title.into(),
                command: APPLY.into(),
                arguments: Some(vec![data]),
                tooltip: None,
            });
        }
        CodeActionResponse::from(code_action)
    };
    let in_range: Vec<Diagnostic> = params
        .context
        .diagnostics
        .into_iter()
        .filter(|d| d.range.start.line <= range.end.line && d.range.end.line >= range.start.line)
        .collect();
    if !in_range.is_empty() {
        let messages: Vec<String> = in_range.iter().map(diagnostic_message).collect();
        let title = format!(
            "Fix with DeepSeek: {}",
            messages[0].lines().next().unwrap_or("")
        );
        actions.push(editing(
            &title,
            CodeActionKind::QuickFix,
            ActionKind::Fix,
            messages,
            Some(in_range),
        ));
    }
    actions.push(editing(
        "Add documentation comment with DeepSeek",
        CodeActionKind::RefactorRewrite,
        ActionKind::Document,
        Vec::new(),
        None,
    ));
    actions.push(editing(
        "Write a unit test with DeepSeek",
        CodeActionKind::RefactorRewrite,
        ActionKind::Test,
        Vec::new(),
        None,
    ));
    Ok(actions)
}

fn diagnostic_message(diagnostic: &Diagnostic) -> String {
    match &diagnostic.message {
        Message::String(s) => s.clone(),
        Message::MarkupContent(m) => m.value.clone(),
    }
}

pub async fn resolve(backend: &Backend, mut action: CodeAction) -> Result<CodeAction> {
    let Some(data) = action.data.take() else {
        return Ok(action);
    };
    let data: ActionData =
        serde_json::from_value(data).map_err(|e| invalid_params(format!("action data: {e}")))?;
    action.edit = Some(edit_for(backend, &data).await?);
    Ok(action)
}

pub async fn execute(backend: &Backend, params: ExecuteCommandParams) -> Result<Option<LspAny>> {
    let argument = params
        .arguments
        .unwrap_or_default()
        .into_iter()
        .next()
        .unwrap_or(Value::Null);
    match params.command.as_str() {
        EXPLAIN => {
            let explain: ExplainParams = serde_json::from_value(argument)
                .map_err(|e| invalid_params(format!("{EXPLAIN} arguments: {e}")))?;
            let token = params
                .work_done_progress_params
                .work_done_token
                .or(explain.work_done_token.clone());
            let result =
                explain_range(backend, explain.text_document.uri, explain.range, token).await?;
            Ok(Some(
                serde_json::to_value(result).expect("plain data serialises"),
            ))
        }
        APPLY => {
            let data: ActionData = serde_json::from_value(argument)
                .map_err(|e| invalid_params(format!("{APPLY} arguments: {e}")))?;
            let edit = edit_for(backend, &data).await?;
            match backend.client.apply_edit(edit).await {
                Ok(result) if result.applied => Ok(None),
                Ok(result) => Err(request_failed(format!(
                    "the editor did not apply the edit: {}",
                    result.failure_reason.unwrap_or_default()
                ))),
                Err(e) => Err(e),
            }
        }
        other => Err(invalid_params(format!(
            "unknown command `{other}`; known: {}",
            COMMANDS.join(", ")
        ))),
    }
}

/// `deepseek/explain`: the explanation as markdown, streamed as progress when a token is given.
pub async fn explain_request(backend: &Backend, params: ExplainParams) -> Result<ExplainResult> {
    explain_range(
        backend,
        params.text_document.uri,
        params.range,
        params.work_done_token,
    )
    .await
}

async fn explain_range(
    backend: &Backend,
    uri: Uri,
    range: Range,
    token: Option<ProgressToken>,
) -> Result<ExplainResult> {
    let document = backend.document(&uri)?;
    let range = target(backend, &document, range)?;
    let code = slice(backend, &document, range)?;
    let prompt = explain_prompt(
        uri.as_ref(),
        range.start.line as usize + 1,
        range.end.line as usize + 1,
        &code,
    );
    let progress = match token {
        Some(token) => Some(backend.client.progress(token, "Explaining").begin().await),
        None => None,
    };
    let mut markdown = String::new();
    let outcome = chat(
        backend,
        prompt,
        |delta| {
            markdown.push_str(delta);
            delta.to_string()
        },
        progress.as_ref(),
    )
    .await;
    if let Some(progress) = progress {
        progress.finish().await;
    }
    outcome?;
    Ok(ExplainResult { markdown })
}

fn slice(backend: &Backend, document: &Document, range: Range) -> Result<String> {
    let start = backend.offset(document, range.start)?;
    let end = backend.offset(document, range.end)?;
    Ok(document.text.byte_slice(start..end.max(start)).to_string())
}

/// Runs a chat prompt on the chat model; `on_text` sees every delta and returns what to report.
async fn chat(
    backend: &Backend,
    prompt: Prompt,
    mut on_text: impl FnMut(&str) -> String,
    progress: Option<
        &tower_lsp_server::OngoingProgress<
            tower_lsp_server::Unbounded,
            tower_lsp_server::NotCancellable,
        >,
    >,
) -> Result<()> {
    let engine = match backend.models.chat() {
        ModelState::Ready(engine) => engine,
        ModelState::Loading => {
            return Err(request_failed(
                "the model is still loading; try again in a moment",
            ));
        }
        ModelState::Unconfigured => {
            return Err(request_failed(
                "no model configured: set `model` (or `chatModel`)",
            ));
        }
        ModelState::Failed(message) => {
            return Err(request_failed(format!(
                "the model failed to load: {message}"
            )));
        }
    };
    let settings = backend.settings();
    let mut generation = engine.submit(Request::new(
        PromptInput::Prompt(prompt),
        settings.chat_max_tokens,
    ));
    while let Some(event) = generation.next().await {
        match event {
            GenerationEvent::Text(delta) => {
                let report = on_text(&delta);
                if let Some(progress) = progress {
                    progress.report(report).await;
                }
            }
            GenerationEvent::Finished(Ok(_)) => return Ok(()),
            GenerationEvent::Finished(Err(e)) => {
                tracing::error!("chat request failed: {e}");
                return Err(request_failed(e.to_string()));
            }
        }
    }
    Ok(())
}

/// The instruction for each editing action.
fn instruction(action: ActionKind, language: &str, problems: &[String]) -> String {
    let language = if language.is_empty() {
        "this"
    } else {
        language
    };
    match action {
        ActionKind::Document => format!(
            "Write a documentation comment for the following {language} code, in the usual doc-comment style \
             of the language. Reply with the comment only."
        ),
        ActionKind::Test => format!(
            "Write a unit test for the following {language} code. Reply with the test code only."
        ),
        ActionKind::Fix => {
            let list: String = problems.iter().map(|p| format!("- {p}\n")).collect();
            format!(
                "Fix these problems in the following {language} code:\n{list}Reply with the corrected code only."
            )
        }
    }
}

async fn edit_for(backend: &Backend, data: &ActionData) -> Result<WorkspaceEdit> {
    let document = backend.document(&data.uri)?;
    let code = slice(backend, &document, data.range)?;
    let language = fence_language(data.uri.as_ref());
    let user = format!(
        "{}\n\n```{language}\n{}\n```",
        instruction(data.action, language, &data.problems),
        code.trim_end()
    );
    let mut reply = String::new();
    chat(
        backend,
        Prompt::chat(None, &user),
        |delta| {
            reply.push_str(delta);
            String::new()
        },
        None,
    )
    .await?;
    let code_reply = extract_code(&reply);
    let start_line = data.range.start.line;
    let indent: String = document
        .text
        .line(start_line as usize)
        .chars()
        .take_while(|c| *c == ' ' || *c == '\t')
        .collect();
    let edit = match data.action {
        ActionKind::Fix => TextEdit {
            range: data.range,
            new_text: code_reply,
        },
        ActionKind::Document => {
            let at = Position {
                line: start_line,
                character: 0,
            };
            let comment: String = code_reply
                .lines()
                .map(|l| format!("{indent}{}\n", l.trim_end()))
                .collect();
            TextEdit {
                range: Range { start: at, end: at },
                new_text: comment,
            }
        }
        ActionKind::Test => {
            let at = data.range.end;
            let base = indent_width(&indent);
            let test: String = code_reply
                .lines()
                .map(|l| format!("\n{}{}", " ".repeat(base), l.trim_end()))
                .collect();
            TextEdit {
                range: Range { start: at, end: at },
                new_text: format!("\n{test}"),
            }
        }
    };
    Ok(WorkspaceEdit {
        changes: Some(HashMap::from([(data.uri.clone(), vec![edit])])),
        ..Default::default()
    })
}

/// The first fenced code block of a reply, or the whole reply without blank edges.
pub fn extract_code(reply: &str) -> String {
    if let Some(open) = reply.find("```") {
        let after_fence = &reply[open + 3..];
        let body = after_fence.split_once('\n').map_or("", |(_, rest)| rest);
        let body = body.find("```").map_or(body, |close| &body[..close]);
        return body.trim_end().to_string();
    }
    reply.trim_matches('\n').trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_comes_out_of_fences() {
        assert_eq!(
            extract_code("Here:\n```rust\nfn a() {}\n```\nDone."),
            "fn a() {}"
        );
        assert_eq!(extract_code("\n/// Adds.\n"), "/// Adds.");
        assert_eq!(extract_code("```\nunclosed\n"), "unclosed");
    }

    #[test]
    fn instructions_name_the_language_and_the_problems() {
        let fix = instruction(ActionKind::Fix, "rust", &["unused variable `x`".into()]);
        assert!(fix.contains("rust code:\n- unused variable `x`\n"));
        assert!(instruction(ActionKind::Test, "", &[]).contains("this code"));
    }
}
