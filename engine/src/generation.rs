//! What a caller gives the engine (a `Request`) and gets back (a `Generation`: a stream of text
//! deltas ending in `GenerationStats` or an error). Dropping a `Generation` cancels it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Instant;

use serde::Serialize;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::error::{EngineError, Result};
use crate::prompt::Prompt;
use crate::sampling::SamplingParams;

/// The prompt of a request: parts for the tokenizer, or ids already tokenized.
#[derive(Debug, Clone)]
pub enum PromptInput {
    Prompt(Prompt),
    Tokens(Vec<u32>),
}

#[derive(Debug, Clone)]
pub struct Request {
    pub prompt: PromptInput,
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation stops before the first occurrence of any of these (matched across tokens).
    pub stop: Vec<String>,
    /// No decode step starts after this instant (the first token is always produced).
    pub deadline: Option<Instant>,
    /// A key such as a document URI: a newer request with the same key ends this one
    /// with `StopReason::Superseded`.
    pub supersedes: Option<String>,
    /// Token ids the first generated token may not be (transformers' `begin_suppress_tokens`):
    /// for example line breaks where a suggestion must start on the cursor's line.
    pub suppress_first: Vec<u32>,
}

impl Request {
    /// Greedy, up to `max_new_tokens`, no stop strings, no deadline, no key.
    pub fn new(prompt: PromptInput, max_new_tokens: usize) -> Self {
        Self {
            prompt,
            max_new_tokens,
            sampling: SamplingParams::greedy(),
            stop: Vec::new(),
            deadline: None,
            supersedes: None,
            suppress_first: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The model produced its end-of-sequence token.
    EndOfSequence,
    StopString,
    MaxTokens,
    Deadline,
    Cancelled,
    /// A newer request with the same key arrived.
    Superseded,
}

#[derive(Debug, Clone, Serialize)]
pub struct GenerationStats {
    pub prompt_tokens: usize,
    /// Prompt tokens whose latents came from the prefix cache.
    pub cached_tokens: usize,
    /// Prompt tokens computed by this request.
    pub computed_tokens: usize,
    pub generated_tokens: usize,
    /// Waiting in the queue before work started.
    pub queue_ms: f64,
    pub prefill_ms: f64,
    /// From submission to the first generated token.
    pub time_to_first_token_ms: f64,
    /// From the first generated token to the end.
    pub decode_ms: f64,
    /// Tokens after the first, per second of decoding.
    pub decode_tokens_per_second: f64,
    pub stop_reason: StopReason,
    /// Pages of the KV cache pool in use when the request ended.
    pub cache_pages_in_use: usize,
    /// Cache pages evicted to make room for this request.
    pub cache_evictions: usize,
    /// The generated ids (the end-of-sequence token excluded).
    #[serde(skip)]
    pub tokens: Vec<u32>,
}

#[derive(Debug)]
pub enum GenerationEvent {
    Text(String),
    Finished(Result<GenerationStats>),
}

/// Shared between a `Generation` and the worker: whether someone wants the work stopped.
#[derive(Debug, Default)]
pub(crate) struct Control(AtomicU8);

const RUNNING: u8 = 0;
const CANCELLED: u8 = 1;
const SUPERSEDED: u8 = 2;

impl Control {
    pub(crate) fn cancel(&self) {
        let _ = self
            .0
            .compare_exchange(RUNNING, CANCELLED, Ordering::AcqRel, Ordering::Acquire);
    }

    pub(crate) fn supersede(&self) {
        let _ = self
            .0
            .compare_exchange(RUNNING, SUPERSEDED, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Why the work should stop, if it should.
    pub(crate) fn stop_reason(&self) -> Option<StopReason> {
        match self.0.load(Ordering::Acquire) {
            CANCELLED => Some(StopReason::Cancelled),
            SUPERSEDED => Some(StopReason::Superseded),
            _ => None,
        }
    }
}

/// A running request. Events arrive in order: zero or more `Text`, then one `Finished`.
pub struct Generation {
    pub(crate) events: UnboundedReceiver<GenerationEvent>,
    pub(crate) control: Arc<Control>,
}

impl Generation {
    /// The next event, blocking the thread (not for use inside an async runtime).
    pub fn blocking_next(&mut self) -> Option<GenerationEvent> {
        self.events.blocking_recv()
    }

    /// The next event, for async callers.
    pub async fn next(&mut self) -> Option<GenerationEvent> {
        self.events.recv().await
    }

    /// Asks the worker to stop; it does so before its next decode step or prefill chunk.
    pub fn cancel(&self) {
        self.control.cancel();
    }

    /// Blocks until the end and returns all the text with the stats.
    pub fn wait(mut self) -> Result<(String, GenerationStats)> {
        let mut text = String::new();
        while let Some(event) = self.blocking_next() {
            match event {
                GenerationEvent::Text(delta) => text.push_str(&delta),
                GenerationEvent::Finished(result) => return result.map(|stats| (text, stats)),
            }
        }
        Err(EngineError::EngineStopped(
            "it ended before finishing the request".into(),
        ))
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        self.control.cancel();
    }
}
