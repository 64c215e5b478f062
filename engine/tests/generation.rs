//! The resident engine on the golden fixtures: prompts encode as DeepSeek's tooling encodes them,
//! greedy text equals transformers' generation, and requests stop, cancel and give way as promised.

use std::path::Path;
use std::time::{Duration, Instant};

use engine::{
    Engine, GenerationEvent, GenerationStats, LoadOptions, Prompt, PromptInput, Request,
    SamplingParams, StopReason,
};

mod support;

use support::*;

/// Runs to the end, checking that the streamed deltas are non-empty and add up to the result.
fn run(engine: &Engine, request: Request) -> (String, GenerationStats) {
    let mut generation = engine.submit(request);
    let mut text = String::new();
    loop {
        match generation.blocking_next().expect("a Finished event") {
            GenerationEvent::Text(delta) => {
                assert!(!delta.is_empty(), "empty deltas are not sent");
                text.push_str(&delta);
            }
            GenerationEvent::Finished(result) => return (text, result.unwrap()),
        }
    }
}

#[test]
fn prompts_encode_exactly_as_deepseek_tooling_encodes_them() {
    for name in ["lite", "v2"] {
        let engine = engine(name);
        let tokenizer = engine.tokenizer().unwrap();
        let r = reference(name);
        assert_eq!(
            tokenizer.encode_prompt(&fim_prompt(&r.fim)).unwrap(),
            r.fim.prompt_ids,
            "{name} FIM"
        );
        assert_eq!(
            tokenizer.encode_prompt(&chat_prompt(&r.chat)).unwrap(),
            r.chat.prompt_ids,
            "{name} chat"
        );
        // The special tokens were found by their strings, wherever the vocabulary put them.
        let special = tokenizer.special_ids();
        assert_eq!(
            (special.bos, special.eos, special.fim),
            (Some(0), Some(1), Some((3, 2, 4)))
        );
        assert_eq!(
            engine.completion_prompt(&[], &r.fim.prefix, &r.fim.suffix),
            fim_prompt(&r.fim),
            "a tokenizer with FIM tokens gets a FIM prompt"
        );
    }
}

#[test]
fn greedy_generation_equals_transformers_text_and_tokens() {
    for name in ["lite", "v2"] {
        let engine = engine(name);
        let r = reference(name);
        for (what, case, prompt) in [
            ("fim", &r.fim, fim_prompt(&r.fim)),
            ("chat", &r.chat, chat_prompt(&r.chat)),
        ] {
            let (text, stats) = run(&engine, request(prompt, case.output_ids.len()));
            assert_eq!(stats.tokens, case.output_ids, "{name} {what}: tokens");
            assert_eq!(text, case.output_text, "{name} {what}: text");
            let expected = if case.ended_with_eos {
                StopReason::EndOfSequence
            } else {
                StopReason::MaxTokens
            };
            assert_eq!(stats.stop_reason, expected);
            assert_eq!(stats.prompt_tokens, case.prompt_ids.len());
            assert_eq!(stats.generated_tokens, case.output_ids.len());
        }
    }
}

#[test]
fn later_requests_reuse_the_cached_prefix_and_still_match() {
    let engine = engine("lite");
    let r = reference("lite");
    let first = run(&engine, request(fim_prompt(&r.fim), 16));
    assert_eq!(first.1.cached_tokens, 0);
    let chat = run(&engine, request(chat_prompt(&r.chat), 16));
    assert_eq!(chat.0, r.chat.output_text);
    assert_eq!(
        chat.1.cached_tokens, 1,
        "only BOS is shared between the FIM and the chat prompt"
    );
    let again = run(&engine, request(fim_prompt(&r.fim), 16));
    assert_eq!(again.0, r.fim.output_text);
    let again = run(&engine, request(fim_prompt(&r.fim), 16));
    assert_eq!(again.0, r.fim.output_text);
    assert_eq!(
        again.1.cached_tokens,
        r.fim.prompt_ids.len() - 1,
        "the whole prompt but its last token is reused"
    );
}

#[test]
fn a_stop_string_split_across_tokens_ends_the_text_before_it() {
    let engine = engine("lite");
    let tokenizer = engine.tokenizer().unwrap().clone();
    let r = reference("lite");
    let pieces: Vec<String> = r
        .fim
        .output_ids
        .iter()
        .map(|&id| tokenizer.decode(&[id]).unwrap())
        .collect();
    // Two neighbouring tokens that are both whole text, after some text: the stop string
    // straddles them, and what comes before it must still be delivered.
    let is_text = |p: &String| !p.is_empty() && !p.contains('\u{FFFD}');
    let (stop, expected) = (1..pieces.len() - 1)
        .filter(|&i| is_text(&pieces[i]) && is_text(&pieces[i + 1]))
        .map(|i| {
            format!(
                "{}{}",
                pieces[i].chars().last().unwrap(),
                pieces[i + 1].chars().next().unwrap()
            )
        })
        .map(|stop| {
            let at = r.fim.output_text.find(&stop).unwrap();
            (stop, &r.fim.output_text[..at])
        })
        .find(|(_, before)| !before.is_empty())
        .expect("a stop string after some text");

    let mut with_stop = request(fim_prompt(&r.fim), 16);
    with_stop.stop = vec![stop.clone()];
    let (text, stats) = run(&engine, with_stop);
    assert_eq!(
        stats.stop_reason,
        StopReason::StopString,
        "stop string {stop:?}"
    );
    assert_eq!(text, expected);
}

#[test]
fn sampling_is_reproducible_from_its_seed() {
    let engine = engine("v2");
    let r = reference("v2");
    let sampled = |seed| {
        let mut req = request(chat_prompt(&r.chat), 12);
        req.sampling = SamplingParams {
            temperature: 0.9,
            top_k: 40,
            top_p: 0.95,
            seed,
        };
        run(&engine, req).1.tokens
    };
    assert_eq!(sampled(42), sampled(42));
    assert_ne!(
        sampled(42),
        sampled(43),
        "different seeds should differ on a random model"
    );
    let mut top1 = request(chat_prompt(&r.chat), 12);
    top1.sampling = SamplingParams {
        temperature: 0.9,
        top_k: 1,
        top_p: 1.0,
        seed: 9,
    };
    assert_eq!(
        run(&engine, top1).1.tokens,
        r.chat.output_ids[..12],
        "top-k 1 is greedy"
    );
}

#[test]
fn a_passed_deadline_stops_after_the_first_token() {
    let engine = engine("lite");
    let r = reference("lite");
    let mut req = request(fim_prompt(&r.fim), 16);
    req.deadline = Some(Instant::now());
    let (_, stats) = run(&engine, req);
    assert_eq!(stats.stop_reason, StopReason::Deadline);
    assert_eq!(stats.generated_tokens, 1);
}

/// Submits a generation that would run for a long time and waits until it has produced text.

#[test]
fn cancel_stops_within_one_decode_step() {
    let engine = engine("lite");
    let mut generation = long_running(&engine, None);
    generation.cancel();
    let steps_at_cancel = engine.counters().decode_steps;
    let stats = loop {
        if let Some(GenerationEvent::Finished(result)) = generation.blocking_next() {
            break result.unwrap();
        }
    };
    assert_eq!(stats.stop_reason, StopReason::Cancelled);
    assert!(engine.counters().decode_steps <= steps_at_cancel + 1);
}

#[test]
fn dropping_the_generation_cancels_it() {
    let engine = engine("lite");
    let generation = long_running(&engine, None);
    drop(generation);
    let steps_at_drop = engine.counters().decode_steps;
    wait_until("the dropped request to finish", || {
        engine.counters().finished == 1
    });
    assert!(engine.counters().decode_steps <= steps_at_drop + 1);
}

#[test]
fn a_newer_request_with_the_same_key_supersedes_the_older() {
    let engine = engine("lite");
    let r = reference("lite");
    let mut older = long_running(&engine, Some("file:///a.py"));
    let mut newer = request(fim_prompt(&r.fim), 16);
    newer.supersedes = Some("file:///a.py".into());
    let newer = engine.submit(newer);
    let older_stats = loop {
        if let Some(GenerationEvent::Finished(result)) = older.blocking_next() {
            break result.unwrap();
        }
    };
    assert_eq!(older_stats.stop_reason, StopReason::Superseded);
    let (text, stats) = newer.wait().unwrap();
    assert_eq!(text, r.fim.output_text, "the newer request runs normally");
    assert_eq!(stats.stop_reason, StopReason::MaxTokens);

    // Another key is left alone.
    let mut other = request(fim_prompt(&r.fim), 4);
    other.supersedes = Some("file:///b.py".into());
    let other = engine.submit(other);
    let mut third = request(fim_prompt(&r.fim), 4);
    third.supersedes = Some("file:///c.py".into());
    assert_eq!(
        engine.submit(third).wait().unwrap().1.stop_reason,
        StopReason::MaxTokens
    );
    assert_eq!(other.wait().unwrap().1.stop_reason, StopReason::MaxTokens);
}

fn copy_model(from: &Path, to: &Path, skip: &[&str]) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap();
        if !skip.contains(&name) {
            std::fs::copy(&path, to.join(name)).unwrap();
        }
    }
}

#[test]
fn a_missing_or_foreign_tokenizer_is_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("v2");
    copy_model(&fixture("v2"), &model, &["tokenizer.json"]);
    let message = Engine::load(&model, &LoadOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        message.contains("no tokenizer.json in")
            && message.contains("copy the model's tokenizer.json"),
        "{message}"
    );

    // lite's tokenizer has 320 entries; v2's embedding has 288 rows.
    std::fs::copy(
        fixture("lite").join("tokenizer.json"),
        model.join("tokenizer.json"),
    )
    .unwrap();
    let message = Engine::load(&model, &LoadOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        message.contains("token id 319 does not fit the model's vocabulary of 288"),
        "{message}"
    );
}

#[test]
fn prompts_of_ids_run_without_a_tokenizer() {
    let model = engine::load_checkpoint(&fixture("lite"), &LoadOptions::default()).unwrap();
    let engine = Engine::start(model, None);
    let r = reference("lite");
    let (text, stats) = run(
        &engine,
        Request::new(PromptInput::Tokens(r.fim.prompt_ids.clone()), 16),
    );
    assert_eq!(text, "", "no tokenizer, no text");
    assert_eq!(stats.tokens, r.fim.output_ids);
    let refused = engine
        .submit(request(fim_prompt(&r.fim), 4))
        .wait()
        .err()
        .unwrap();
    assert!(refused.to_string().contains("no tokenizer"));
}

#[test]
fn suppressed_first_tokens_are_never_chosen_first() {
    let model = engine::load_checkpoint(&fixture("lite"), &LoadOptions::default()).unwrap();
    let engine = Engine::start(model, None);
    let r = reference("lite");
    let greedy = &r.fim.output_ids;
    let mut request = Request::new(PromptInput::Tokens(r.fim.prompt_ids.clone()), 16);
    request.suppress_first = vec![greedy[0]];
    let (_, stats) = run(&engine, request);
    assert_ne!(
        stats.tokens[0], greedy[0],
        "the greedy first token is suppressed"
    );
    // With every id but one suppressed, that one is the first token.
    let mut all_first = Request::new(PromptInput::Tokens(r.fim.prompt_ids.clone()), 1);
    all_first.suppress_first = (0..320).filter(|&id| id != 7).collect();
    let (_, one) = run(&engine, all_first);
    assert_eq!(
        one.tokens,
        vec![7],
        "everything else suppressed leaves id 7"
    );
}

/// Collects what the engine logs, to count warnings.
#[derive(Clone, Default)]
struct LogBuffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_tokenizer_without_fim_tokens_completes_from_the_prefix_and_says_so_once() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("lite");
    copy_model(&fixture("lite"), &model, &["tokenizer.json"]);
    // Rename the FIM tokens: same ids, strings the engine does not know.
    let tokenizer = std::fs::read_to_string(fixture("lite").join("tokenizer.json")).unwrap();
    let renamed = tokenizer
        .replace("fim▁hole", "gap")
        .replace("fim▁begin", "open")
        .replace("fim▁end", "close");
    std::fs::write(model.join("tokenizer.json"), renamed).unwrap();

    let logs = LogBuffer::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        let engine = Engine::load(&model, &LoadOptions::default()).unwrap();
        assert_eq!(engine.tokenizer().unwrap().special_ids().fim, None);
        let r = reference("lite");
        let prompt = engine.completion_prompt(&[], &r.fim.prefix, &r.fim.suffix);
        assert_eq!(prompt, Prompt::prefix_only(&[], &r.fim.prefix));
        for _ in 0..3 {
            engine.completion_prompt(&[], "x", "y");
        }
        let (_, stats) = run(&engine, request(prompt, 4));
        assert_eq!(stats.generated_tokens, 4);
        // BOS + the prefix alone.
        let prefix_ids = engine
            .tokenizer()
            .unwrap()
            .encode_text(&r.fim.prefix)
            .unwrap();
        assert_eq!(stats.prompt_tokens, 1 + prefix_ids.len());
    });
    let logged = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert_eq!(
        logged.matches("has no FIM tokens").count(),
        1,
        "logged: {logged}"
    );
}

#[test]
fn dropping_the_engine_stops_the_running_request() {
    let engine = engine("lite");
    let mut generation = long_running(&engine, None);
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(engine);
        done.send(()).unwrap();
    });
    finished
        .recv_timeout(Duration::from_secs(30))
        .expect("dropping the engine returns promptly");
    let stats = loop {
        match generation.blocking_next() {
            Some(GenerationEvent::Finished(result)) => break result.unwrap(),
            Some(GenerationEvent::Text(_)) => {}
            None => panic!("the request must be answered"),
        }
    };
    assert_eq!(stats.stop_reason, StopReason::Cancelled);
}
