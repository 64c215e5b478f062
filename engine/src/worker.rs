//! The resident engine: one thread owns the model and its cache and serves requests in order.
//!
//! `Engine::submit` returns at once. The worker takes requests first-in first-out, reuses the
//! latent cache of the longest prompt prefix it shares with the previous request, prefills the
//! rest in chunks, then decodes token by token. Between chunks and between decode steps it checks
//! whether the request was cancelled (its `Generation` dropped or `cancel()`ed) or superseded (a
//! newer request with the same key arrived), and stops at once if so.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};

use crate::checkpoint::{LoadOptions, load_checkpoint};
use crate::detokenize::Detokenizer;
use crate::error::{EngineError, Result};
use crate::generation::{
    Control, Generation, GenerationEvent, GenerationStats, PromptInput, Request, StopReason,
};
use crate::latent_cache::LatentCache;
use crate::model::{Logits, Model};
use crate::prompt::{ContextBlock, Prompt};
use crate::sampling::Sampler;
use crate::stop::{StopScan, StopStrings};
use crate::tokenizer::TextTokenizer;

pub struct Engine {
    queue: Arc<Queue>,
    counters: Arc<Counters>,
    tokenizer: Option<Arc<TextTokenizer>>,
    worker: Option<JoinHandle<()>>,
}

/// A snapshot of the engine's running totals (for status displays and leak tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct EngineCounters {
    pub submitted: usize,
    pub finished: usize,
    pub queued: usize,
    pub decode_steps: usize,
    pub cached_tokens: usize,
    pub cache_bytes: usize,
}

#[derive(Default)]
struct Counters {
    submitted: AtomicUsize,
    finished: AtomicUsize,
    decode_steps: AtomicUsize,
    cached_tokens: AtomicUsize,
    cache_bytes: AtomicUsize,
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
    /// Loads a model directory (weights and tokenizer) and starts the worker.
    pub fn load(dir: &Path, options: &LoadOptions) -> Result<Self> {
        let model = load_checkpoint(dir, options)?;
        let tokenizer = TextTokenizer::from_dir(dir, model.config().vocab_size)?;
        Ok(Self::start(model, Some(Arc::new(tokenizer))))
    }

    /// Starts the worker thread around a loaded model. Without a tokenizer, requests must give
    /// token ids and no text is produced (benchmarks).
    pub fn start(model: Model, tokenizer: Option<Arc<TextTokenizer>>) -> Self {
        let queue = Arc::new(Queue {
            state: Mutex::new(QueueState::default()),
            wake: Condvar::new(),
        });
        let counters = Arc::new(Counters::default());
        let worker = {
            let (queue, counters, tokenizer) = (queue.clone(), counters.clone(), tokenizer.clone());
            std::thread::Builder::new()
                .name("deepseek-engine".into())
                .spawn(move || Worker::new(model, tokenizer, counters).serve(&queue))
                .expect("the OS can start one thread")
        };
        Self {
            queue,
            counters,
            tokenizer,
            worker: Some(worker),
        }
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
            cached_tokens: self.counters.cached_tokens.load(Ordering::Relaxed),
            cache_bytes: self.counters.cache_bytes.load(Ordering::Relaxed),
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
    cache: LatentCache,
    /// The ids whose latents `cache` holds, position by position.
    cached_ids: Vec<u32>,
}

impl Worker {
    fn new(model: Model, tokenizer: Option<Arc<TextTokenizer>>, counters: Arc<Counters>) -> Self {
        let cache = model.new_cache();
        Self {
            model,
            tokenizer,
            counters,
            cache,
            cached_ids: Vec::new(),
        }
    }

    fn serve(mut self, queue: &Queue) {
        while let Some(job) = next_job(queue) {
            let key = job.request.supersedes.clone();
            let control = job.control.clone();
            // A bug that panics inside one request must not take the engine down with it.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run(&job)))
                .unwrap_or_else(|panic| {
                    self.cache.truncate(0);
                    self.cached_ids.clear();
                    let message = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    tracing::error!("a request failed with an internal error: {message}");
                    Err(EngineError::Internal(message))
                });
            // Count before reporting, so a caller that saw `Finished` sees the counters settled.
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
            generated_tokens: 0,
            queue_ms: millis(job.submitted, started),
            prefill_ms: 0.0,
            time_to_first_token_ms: 0.0,
            decode_ms: 0.0,
            decode_tokens_per_second: 0.0,
            stop_reason: StopReason::Cancelled,
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
        stats.stop_reason = self.generate(job, &prompt, &mut stats)?;
        self.counters
            .cached_tokens
            .store(self.cache.len(), Ordering::Relaxed);
        self.counters
            .cache_bytes
            .store(self.cache.allocated_bytes(), Ordering::Relaxed);
        if stats.generated_tokens > 1 {
            stats.decode_tokens_per_second =
                (stats.generated_tokens - 1) as f64 / (stats.decode_ms / 1e3);
        }
        Ok(stats)
    }

    /// Prefill then decode; returns why generation stopped.
    fn generate(
        &mut self,
        job: &Job,
        prompt: &[u32],
        stats: &mut GenerationStats,
    ) -> Result<StopReason> {
        let request = &job.request;

        // Reuse the latents of the longest shared prefix; at least one token must run to get logits.
        let shared = common_prefix(&self.cached_ids, prompt).min(prompt.len() - 1);
        self.cache.truncate(shared);
        self.cached_ids.truncate(shared);
        stats.cached_tokens = shared;
        let prefill_started = Instant::now();
        let outcome =
            self.model
                .forward_until(&prompt[shared..], &mut self.cache, Logits::Last, &|| {
                    interruption(job).is_some()
                });
        // Whatever chunks ran are in the cache; keep `cached_ids` in step with it.
        let cached = self.cache.len().max(shared);
        self.cached_ids.extend_from_slice(&prompt[shared..cached]);
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
            let next = sampler.sample(&logits.squeeze(0)?.to_vec1::<f32>()?);
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
            logits = self.model.forward(&[next], &mut self.cache, Logits::Last)?;
            self.cached_ids.push(next);
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

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

fn millis(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64() * 1e3
}
