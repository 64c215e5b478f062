//! The resident engine: one thread owns the model and its cache and serves requests in order.
//!
//! `Engine::submit` returns at once. The worker takes requests first-in first-out, takes the
//! latents of the longest cached prefix of the prompt from the radix cache, prefills the rest in
//! chunks, then decodes token by token; at the end the sequence's pages join the radix cache. Between chunks and between decode steps it checks
//! whether the request was cancelled (its `Generation` dropped or `cancel()`ed) or superseded (a
//! newer request with the same key arrived), and stops at once if so.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};

use crate::checkpoint::{LoadOptions, load_checkpoint_and_tokenizer};
use crate::detokenize::Detokenizer;
use crate::error::{EngineError, Result};
use crate::generation::{
    Control, Generation, GenerationEvent, GenerationStats, PromptInput, Request, StopReason,
};
use crate::latent_cache::LatentCache;
use crate::model::{Logits, Model};
use crate::page_pool::{DEFAULT_PAGE_TOKENS, PagePool, default_budget_bytes};
use crate::prompt::{ContextBlock, Prompt};
use crate::radix_cache::{CacheCounters, RadixCache};
use crate::sampling::Sampler;
use crate::stop::{StopScan, StopStrings};
use crate::tokenizer::TextTokenizer;

pub struct Engine {
    queue: Arc<Queue>,
    counters: Arc<Counters>,
    tokenizer: Option<Arc<TextTokenizer>>,
    /// The longest sequence the model's config says it handles (`max_position_embeddings`).
    context_window: usize,
    /// Where the model runs and what it holds, for the log.
    summary: String,
    worker: Option<JoinHandle<()>>,
}

/// A snapshot of the engine's running totals (for status displays and leak tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct EngineCounters {
    pub submitted: usize,
    pub finished: usize,
    pub queued: usize,
    pub decode_steps: usize,
    pub cache: CacheCounters,
}

/// How the engine keeps its prefix cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineOptions {
    /// Bytes of latent KV pages to keep; `None`: a quarter of available memory, at most 2 GiB.
    pub cache_budget_bytes: Option<usize>,
    /// Tokens per cache page.
    pub page_tokens: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            cache_budget_bytes: None,
            page_tokens: DEFAULT_PAGE_TOKENS,
        }
    }
}

#[derive(Default)]
struct Counters {
    submitted: AtomicUsize,
    finished: AtomicUsize,
    decode_steps: AtomicUsize,
    cache: Mutex<CacheCounters>,
}

struct Queue {
    state: Mutex<QueueState>,
    wake: Condvar,
}

#[derive(Default)]
struct QueueState {
    pending: VecDeque<Job>,
    /// The newest request of each key, so the next one can supersede it.
    latest_by_key: HashMap<String, Arc<Control>>,
    /// The request the worker is running, so shutting down can stop it.
    running: Option<Arc<Control>>,
    shutting_down: bool,
}

struct Job {
    request: Request,
    control: Arc<Control>,
    events: UnboundedSender<GenerationEvent>,
    submitted: Instant,
}

impl Engine {
    /// Loads a model directory or `.gguf` file (weights and tokenizer) and starts the worker.
    pub fn load(path: &Path, options: &LoadOptions) -> Result<Self> {
        Self::load_with(path, options, EngineOptions::default())
    }

    pub fn load_with(path: &Path, options: &LoadOptions, engine: EngineOptions) -> Result<Self> {
        let (model, tokenizer) = load_checkpoint_and_tokenizer(path, options)?;
        Ok(Self::start_with(model, Some(Arc::new(tokenizer)), engine))
    }

    /// Starts the worker thread around a loaded model. Without a tokenizer, requests must give
    /// token ids and no text is produced (benchmarks).
    pub fn start(model: Model, tokenizer: Option<Arc<TextTokenizer>>) -> Self {
        Self::start_with(model, tokenizer, EngineOptions::default())
    }

    pub fn start_with(
        model: Model,
        tokenizer: Option<Arc<TextTokenizer>>,
        options: EngineOptions,
    ) -> Self {
        let queue = Arc::new(Queue {
            state: Mutex::new(QueueState::default()),
            wake: Condvar::new(),
        });
        let counters = Arc::new(Counters::default());
        let context_window = model.config().max_position_embeddings;
        let summary = model.summary();
        let worker = {
            let (queue, counters, tokenizer) = (queue.clone(), counters.clone(), tokenizer.clone());
            std::thread::Builder::new()
                .name("deepseek-engine".into())
                .spawn(move || Worker::new(model, tokenizer, counters, options).serve(&queue))
                .expect("the OS can start one thread")
        };
        Self {
            queue,
            counters,
            tokenizer,
            context_window,
            summary,
            worker: Some(worker),
        }
    }

    /// Where the model runs and what it holds ([`Model::summary`]).
    pub fn summary(&self) -> &str {
        &self.summary
    }

    /// The most tokens a prompt and its generation should take together: the model's
    /// `max_position_embeddings` (a tiny model trained on short sequences says so there).
    pub fn context_window(&self) -> usize {
        self.context_window
    }

    pub fn tokenizer(&self) -> Option<&Arc<TextTokenizer>> {
        self.tokenizer.as_ref()
    }

    /// A completion prompt: fill-in-the-middle when the tokenizer has FIM tokens, else the text
    /// before the cursor alone (logged once).
    pub fn completion_prompt(
        &self,
        context: &[ContextBlock],
        prefix: &str,
        suffix: &str,
    ) -> Prompt {
        match &self.tokenizer {
            Some(t) if t.supports_fim() => Prompt::fill_in_middle(context, prefix, suffix),
            _ => Prompt::prefix_only(context, prefix),
        }
    }

    /// Queues `request` and returns its stream at once.
    pub fn submit(&self, request: Request) -> Generation {
        let (events, receiver) = unbounded_channel();
        let control = Arc::new(Control::default());
        let job = Job {
            request,
            control: control.clone(),
            events,
            submitted: Instant::now(),
        };
        let mut state = self.queue.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(key) = &job.request.supersedes
            && let Some(older) = state.latest_by_key.insert(key.clone(), control.clone())
        {
            older.supersede();
        }
        if state.shutting_down {
            control.cancel();
        }
        state.pending.push_back(job);
        self.counters.submitted.fetch_add(1, Ordering::Relaxed);
        drop(state);
        self.queue.wake.notify_one();
        Generation {
            events: receiver,
            control,
        }
    }

    pub fn counters(&self) -> EngineCounters {
        let queued = self
            .queue
            .state
            .lock()
            .map(|s| s.pending.len())
            .unwrap_or(0);
        EngineCounters {
            submitted: self.counters.submitted.load(Ordering::Relaxed),
            finished: self.counters.finished.load(Ordering::Relaxed),
            queued,
            decode_steps: self.counters.decode_steps.load(Ordering::Relaxed),
            cache: *self
                .counters
                .cache
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Ok(mut state) = self.queue.state.lock() {
            state.shutting_down = true;
            for job in &state.pending {
                job.control.cancel();
            }
            if let Some(running) = &state.running {
                running.cancel();
            }
        }
        self.queue.wake.notify_all();
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// The state the worker thread owns.
struct Worker {
    model: Model,
    tokenizer: Option<Arc<TextTokenizer>>,
    counters: Arc<Counters>,
    cache: RadixCache,
}

impl Worker {
    fn new(
        model: Model,
        tokenizer: Option<Arc<TextTokenizer>>,
        counters: Arc<Counters>,
        options: EngineOptions,
    ) -> Self {
        let layout = model.page_layout(options.page_tokens);
        let budget = options
            .cache_budget_bytes
            .unwrap_or_else(|| default_budget_bytes(&layout));
        let cache = RadixCache::new(PagePool::new(layout, Some(budget)));
        *counters.cache.lock().unwrap_or_else(|e| e.into_inner()) = cache.counters();
        Self {
            model,
            tokenizer,
            counters,
            cache,
        }
    }

    fn serve(mut self, queue: &Queue) {
        while let Some(job) = next_job(queue) {
            let key = job.request.supersedes.clone();
            let control = job.control.clone();
            // A bug that panics inside one request must not take the engine down with it.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run(&job)))
                .unwrap_or_else(|panic| {
                    let message = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    tracing::error!("a request failed with an internal error: {message}");
                    Err(EngineError::Internal(message))
                });
            // Count before reporting, so a caller that saw `Finished` sees the counters settled.
            *self
                .counters
                .cache
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = self.cache.counters();
            self.counters.finished.fetch_add(1, Ordering::Relaxed);
            let _ = job.events.send(GenerationEvent::Finished(result));
            if let Some(key) = key {
                let mut state = queue.state.lock().unwrap_or_else(|e| e.into_inner());
                if state
                    .latest_by_key
                    .get(&key)
                    .is_some_and(|c| Arc::ptr_eq(c, &control))
                {
                    state.latest_by_key.remove(&key);
                }
            }
        }
    }

    fn run(&mut self, job: &Job) -> Result<GenerationStats> {
        let started = Instant::now();
        let request = &job.request;
        let mut stats = GenerationStats {
            prompt_tokens: 0,
            cached_tokens: 0,
            computed_tokens: 0,
            generated_tokens: 0,
            queue_ms: millis(job.submitted, started),
            prefill_ms: 0.0,
            time_to_first_token_ms: 0.0,
            decode_ms: 0.0,
            decode_tokens_per_second: 0.0,
            stop_reason: StopReason::Cancelled,
            cache_pages_in_use: 0,
            cache_evictions: 0,
            tokens: Vec::new(),
        };
        if let Some(reason) = job.control.stop_reason() {
            stats.stop_reason = reason;
            return Ok(stats);
        }
        let prompt = match &request.prompt {
            PromptInput::Tokens(ids) => ids.clone(),
            PromptInput::Prompt(prompt) => match &self.tokenizer {
                Some(tokenizer) => tokenizer.encode_prompt(prompt)?,
                None => {
                    return Err(EngineError::InvalidInput(
                        "this engine has no tokenizer: give the prompt as token ids".into(),
                    ));
                }
            },
        };
        if prompt.is_empty() {
            return Err(EngineError::InvalidInput("the prompt is empty".into()));
        }
        if let Err(message) = request.sampling.validate() {
            return Err(EngineError::InvalidInput(message));
        }
        stats.prompt_tokens = prompt.len();
        let evictions_before = self.cache.counters().evictions;
        // The sequence starts from the longest cached prefix (at least one token must run to
        // give logits) and joins the cache at the end, however the request ends.
        let mut sequence = self.cache.match_prefix(&prompt, prompt.len() - 1);
        let mut tokens = prompt.clone();
        let outcome = self.generate(job, &prompt, &mut sequence, &mut tokens, &mut stats);
        self.cache.insert(&tokens, sequence);
        let counters = self.cache.counters();
        stats.cache_pages_in_use = counters.pages_in_use;
        stats.cache_evictions = counters.evictions - evictions_before;
        stats.stop_reason = outcome?;
        if stats.generated_tokens > 1 {
            stats.decode_tokens_per_second =
                (stats.generated_tokens - 1) as f64 / (stats.decode_ms / 1e3);
        }
        Ok(stats)
    }

    /// Prefill then decode; returns why generation stopped.
    /// Prefills the prompt past what `sequence` already holds, then decodes; `tokens` tracks the
    /// ids whose latents `sequence` holds (a prefix of it may be stale past `sequence.len()`).
    fn generate(
        &mut self,
        job: &Job,
        prompt: &[u32],
        sequence: &mut LatentCache,
        tokens: &mut Vec<u32>,
        stats: &mut GenerationStats,
    ) -> Result<StopReason> {
        let request = &job.request;
        let cached = sequence.len();
        stats.cached_tokens = cached;
        stats.computed_tokens = prompt.len() - cached;
        let prefill_started = Instant::now();
        self.cache
            .make_room(sequence.pages_needed(prompt.len() - cached))?;
        let outcome = self
            .model
            .forward_until(&prompt[cached..], sequence, Logits::Last, &|| {
                interruption(job).is_some()
            });
        stats.prefill_ms = millis(prefill_started, Instant::now());
        let Some(mut logits) = outcome? else {
            return Ok(interruption(job).unwrap_or(StopReason::Cancelled));
        };

        let eos = self.tokenizer.as_ref().and_then(|t| t.special_ids().eos);
        let mut sampler = Sampler::new(request.sampling);
        let mut text = self
            .tokenizer
            .clone()
            .map(|t| TextStream::new(t, &request.stop));
        let mut first_token_at = None;
        let reason = loop {
            let mut row = logits.squeeze(0)?.to_vec1::<f32>()?;
            if stats.generated_tokens == 0 {
                for &id in &request.suppress_first {
                    if let Some(logit) = row.get_mut(id as usize) {
                        *logit = f32::NEG_INFINITY;
                    }
                }
            }
            let next = sampler.sample(&row);
            let now = Instant::now();
            let first = *first_token_at.get_or_insert(now);
            stats.time_to_first_token_ms = millis(job.submitted, first);
            if Some(next) == eos {
                break StopReason::EndOfSequence;
            }
            stats.generated_tokens += 1;
            stats.tokens.push(next);
            if let Some(text) = &mut text
                && let Some(reason) = text.push(next, &job.events)?
            {
                break reason;
            }
            if stats.generated_tokens >= request.max_new_tokens {
                break StopReason::MaxTokens;
            }
            if let Some(reason) = interruption(job) {
                break reason;
            }
            if request
                .deadline
                .is_some_and(|deadline| Instant::now() >= deadline)
            {
                break StopReason::Deadline;
            }
            self.cache.make_room(sequence.pages_needed(1))?;
            logits = self.model.forward(&[next], sequence, Logits::Last)?;
            tokens.push(next);
            self.counters.decode_steps.fetch_add(1, Ordering::Relaxed);
        };
        stats.decode_ms = first_token_at.map_or(0.0, |first| millis(first, Instant::now()));
        let reason = match (&mut text, reason) {
            // Nobody is listening any more, or the text already ended at a stop string.
            (_, StopReason::Cancelled | StopReason::Superseded | StopReason::StopString)
            | (None, _) => reason,
            (Some(text), reason) => text.finish(&job.events).unwrap_or(reason),
        };
        Ok(reason)
    }
}

/// Generated ids to text deltas: incremental detokenization, then stop strings.
struct TextStream {
    detokenizer: Detokenizer,
    stops: StopStrings,
}

impl TextStream {
    fn new(tokenizer: Arc<TextTokenizer>, stops: &[String]) -> Self {
        Self {
            detokenizer: Detokenizer::new(tokenizer),
            stops: StopStrings::new(stops),
        }
    }

    /// Sends the text `id` completes; `Some(reason)` when generation must stop.
    fn push(
        &mut self,
        id: u32,
        events: &UnboundedSender<GenerationEvent>,
    ) -> Result<Option<StopReason>> {
        let delta = self.detokenizer.push(id)?;
        Ok(self.emit(&delta, events))
    }

    /// At the end: releases held-back text. `Some(StopString)` if a stop string completes in it.
    fn finish(&mut self, events: &UnboundedSender<GenerationEvent>) -> Option<StopReason> {
        let tail = self.detokenizer.finish();
        if let Some(reason) = self.emit(&tail, events) {
            return Some(reason);
        }
        send(events, self.stops.finish());
        None
    }

    fn emit(
        &mut self,
        delta: &str,
        events: &UnboundedSender<GenerationEvent>,
    ) -> Option<StopReason> {
        match self.stops.push(delta) {
            StopScan::Continue(text) => (!send(events, text)).then_some(StopReason::Cancelled),
            StopScan::Stopped(text) => {
                send(events, text);
                Some(StopReason::StopString)
            }
        }
    }
}

/// Sends non-empty text; false when the receiver is gone.
fn send(events: &UnboundedSender<GenerationEvent>, text: String) -> bool {
    text.is_empty() || events.send(GenerationEvent::Text(text)).is_ok()
}

/// Whether the request should stop now: cancelled, superseded, or its receiver dropped.
fn interruption(job: &Job) -> Option<StopReason> {
    job.control
        .stop_reason()
        .or_else(|| job.events.is_closed().then_some(StopReason::Cancelled))
}

/// Waits for the next job; `None` once the engine shuts down and the queue is empty.
fn next_job(queue: &Queue) -> Option<Job> {
    let mut state = queue.state.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        if let Some(job) = state.pending.pop_front() {
            state.running = Some(job.control.clone());
            return Some(job);
        }
        state.running = None;
        if state.shutting_down {
            return None;
        }
        state = queue.wake.wait(state).unwrap_or_else(|e| e.into_inner());
    }
}

fn millis(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64() * 1e3
}
