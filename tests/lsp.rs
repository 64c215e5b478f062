//! `deepseek-lsp serve` driven by a real LSP client over stdio: Content-Length framed JSON-RPC,
//! server-to-client requests answered, every reply checked.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{shop_workspace, write_file};

mod support;

const TIMEOUT: Duration = Duration::from_secs(60);
const REQUEST_CANCELLED: i64 = -32800;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("engine/tests/fixtures")
        .join(name)
}

/// A minimal LSP client: frames messages, pairs replies with requests, answers the server's
/// requests (configuration, progress tokens, edits) and keeps its notifications.
struct Client {
    child: Child,
    stdin: ChildStdin,
    incoming: Receiver<Value>,
    next_id: i64,
    /// Notifications and server requests seen so far, in order.
    log: Vec<Value>,
    /// Replies that arrived while waiting for another one.
    replies: VecDeque<Value>,
    /// What `workspace/configuration` answers.
    configuration: Value,
}

impl Client {
    fn start(extra_args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_deepseek-lsp"))
            .arg("serve")
            .args(extra_args)
            .env_remove("DEEPSEEK_LSP_MODEL")
            .env("DEEPSEEK_LSP_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the server starts");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (sender, incoming) = channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            loop {
                let mut length = None;
                loop {
                    let mut header = String::new();
                    if reader.read_line(&mut header).unwrap_or(0) == 0 {
                        return;
                    }
                    let header = header.trim_end();
                    if header.is_empty() {
                        break;
                    }
                    if let Some(value) = header.strip_prefix("Content-Length: ") {
                        length = value.parse::<usize>().ok();
                    }
                }
                let mut body = vec![0; length.expect("Content-Length header")];
                if reader.read_exact(&mut body).is_err() {
                    return;
                }
                let message: Value = serde_json::from_slice(&body).expect("the server sends JSON");
                if sender.send(message).is_err() {
                    return;
                }
            }
        });
        Self {
            child,
            stdin,
            incoming,
            next_id: 0,
            log: Vec::new(),
            replies: VecDeque::new(),
            configuration: Value::Null,
        }
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        self.stdin.write_all(bytes).unwrap();
        self.stdin.flush().unwrap();
    }

    fn send(&mut self, message: &Value) {
        let body = message.to_string();
        self.send_raw(format!("Content-Length: {}\r\n\r\n{body}", body.len()).as_bytes());
    }

    fn notify(&mut self, method: &str, params: Value) {
        self.send(&json!({"jsonrpc": "2.0", "method": method, "params": params}));
    }

    /// Sends a request and returns its id without waiting.
    fn start_request(&mut self, method: &str, params: Value) -> i64 {
        self.next_id += 1;
        let id = self.next_id;
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        id
    }

    /// The reply to request `id` (its `result` or `error` object inside).
    fn reply(&mut self, id: i64) -> Value {
        if let Some(i) = self.replies.iter().position(|r| r["id"] == id) {
            return self.replies.remove(i).unwrap();
        }
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let message = self
                .next_message(deadline)
                .unwrap_or_else(|| panic!("no reply to request {id}"));
            if message.get("method").is_none() {
                if message["id"] == id {
                    return message;
                }
                self.replies.push_back(message);
            }
        }
    }

    fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.start_request(method, params);
        self.reply(id)
    }

    /// The next message from the server, answering server requests on the way.
    fn next_message(&mut self, deadline: Instant) -> Option<Value> {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = match self.incoming.recv_timeout(left) {
            Ok(message) => message,
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
        };
        if let (Some(method), Some(id)) = (
            message.get("method").and_then(Value::as_str),
            message.get("id"),
        ) {
            let result = match method {
                "workspace/configuration" => json!([self.configuration.clone()]),
                "workspace/applyEdit" => json!({"applied": true}),
                _ => Value::Null,
            };
            let id = id.clone();
            self.send(&json!({"jsonrpc": "2.0", "id": id, "result": result}));
        }
        if message.get("method").is_some() {
            self.log.push(message.clone());
        }
        Some(message)
    }

    /// Waits until a notification or server request satisfying `matches` has been seen.
    fn wait_for(&mut self, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
        if let Some(found) = self.log.iter().find(|m| matches(m)) {
            return found.clone();
        }
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let message = self
                .next_message(deadline)
                .unwrap_or_else(|| panic!("timed out waiting for {what}"));
            if message.get("method").is_some() && matches(&message) {
                return message;
            }
            if message.get("method").is_none() {
                self.replies.push_back(message);
            }
        }
    }

    fn initialize(&mut self, encodings: &[&str], options: Value, capabilities: Value) -> Value {
        self.initialize_with(encodings, options, capabilities, json!({}))
    }

    /// Initialize with more parameters (workspace folders, root URI).
    fn initialize_with(
        &mut self,
        encodings: &[&str],
        options: Value,
        capabilities: Value,
        extra: Value,
    ) -> Value {
        let mut caps = json!({"general": {"positionEncodings": encodings}, "window": {"workDoneProgress": true}});
        merge(&mut caps, capabilities);
        let mut params =
            json!({"processId": null, "capabilities": caps, "initializationOptions": options});
        merge(&mut params, extra);
        let reply = self.request("initialize", params);
        self.notify("initialized", json!({}));
        reply
    }

    /// Waits until the model is ready (or failed), via `deepseek/status`.
    fn wait_for_model(&mut self) -> Value {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let status = self.request("deepseek/status", Value::Null)["result"].clone();
            if status["model"] != "loading" {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the model never finished loading"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn open(&mut self, uri: &str, language: &str, text: &str) {
        self.notify("textDocument/didOpen", json!({"textDocument": {"uri": uri, "languageId": language, "version": 1, "text": text}}));
    }

    fn shutdown(mut self) {
        let reply = self.request("shutdown", Value::Null);
        assert_eq!(reply["result"], Value::Null);
        self.notify("exit", Value::Null);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "exit status {status}");
                return;
            }
            assert!(Instant::now() < deadline, "the server did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn merge(base: &mut Value, extra: Value) {
    if let (Some(base), Value::Object(extra)) = (base.as_object_mut(), extra) {
        for (key, value) in extra {
            match base.get_mut(&key) {
                Some(existing) if existing.is_object() && value.is_object() => {
                    merge(existing, value)
                }
                _ => {
                    base.insert(key, value);
                }
            }
        }
    }
}

fn model_options(extra: Value) -> Value {
    let mut options =
        json!({"model": fixture("lite").to_str().unwrap(), "debounceMs": 0, "maxTokens": 16});
    merge(&mut options, extra);
    options
}

const SOURCE: &str = "def add(a, b):\n    \n\nprint(add(1, 2))\n";
const URI: &str = "file:///work/example.py";

fn position(line: u32, character: u32) -> Value {
    json!({"line": line, "character": character})
}

fn inline_params(uri: &str, line: u32, character: u32) -> Value {
    json!({"textDocument": {"uri": uri}, "position": position(line, character), "context": {"triggerKind": 2}})
}

#[test]
fn initialize_negotiates_utf8_when_offered_and_utf16_otherwise() {
    let mut client = Client::start(&[]);
    let reply = client.initialize(&["utf-8", "utf-16"], Value::Null, json!({}));
    let capabilities = &reply["result"]["capabilities"];
    assert_eq!(capabilities["positionEncoding"], "utf-8");
    assert_eq!(
        capabilities["textDocumentSync"]["change"], 2,
        "incremental sync"
    );
    assert_eq!(capabilities["inlineCompletionProvider"], true);
    assert!(capabilities["completionProvider"].is_object());
    assert_eq!(capabilities["codeActionProvider"]["resolveProvider"], true);
    assert_eq!(reply["result"]["serverInfo"]["name"], "deepseek-lsp");
    client.shutdown();

    let mut client = Client::start(&[]);
    let reply = client.initialize(&["utf-16"], Value::Null, json!({}));
    assert_eq!(
        reply["result"]["capabilities"]["positionEncoding"],
        "utf-16"
    );
    client.shutdown();
}

/// The range an Explain action targets for an empty selection on a line with no function:
/// the whole line, measured by the server in the negotiated encoding.
fn explain_target(client: &mut Client, uri: &str, line: u32) -> Value {
    let reply = client.request(
        "textDocument/codeAction",
        json!({"textDocument": {"uri": uri}, "range": {"start": position(line, 0), "end": position(line, 0)}, "context": {"diagnostics": []}}),
    );
    let actions = reply["result"]
        .as_array()
        .unwrap_or_else(|| panic!("{reply}"))
        .clone();
    let explain = actions
        .iter()
        .find(|a| a["command"]["command"] == "deepseek.explain")
        .expect("an explain action");
    explain["command"]["arguments"][0]["range"].clone()
}

#[test]
fn incremental_edits_with_multi_byte_and_astral_characters() {
    for (encodings, emoji_units, accent_units) in [(["utf-16"], 2, 1), (["utf-8"], 4, 2)] {
        let mut client = Client::start(&[]);
        client.initialize(&encodings, Value::Null, json!({}));
        let uri = "file:///work/notes.txt";
        client.open(uri, "plaintext", "x = 1\n");
        // Insert "😀é" at the start, then replace the emoji by "ab": every edit in code units.
        client.notify(
            "textDocument/didChange",
            json!({"textDocument": {"uri": uri, "version": 2}, "contentChanges": [{"range": {"start": position(0, 0), "end": position(0, 0)}, "text": "😀é"}]}),
        );
        client.notify(
            "textDocument/didChange",
            json!({"textDocument": {"uri": uri, "version": 3}, "contentChanges": [{"range": {"start": position(0, 0), "end": position(0, emoji_units)}, "text": "ab"}]}),
        );
        // Now "abéx = 1": the whole line measures 2 + accent + 5 units.
        let range = explain_target(&mut client, uri, 0);
        assert_eq!(
            range["end"],
            position(0, 2 + accent_units + 5),
            "{encodings:?}"
        );
        client.shutdown();
    }
}

#[test]
fn inline_completion_and_completion_reply_on_a_fixture_model() {
    let mut client = Client::start(&[]);
    let log_file =
        std::env::temp_dir().join(format!("deepseek-lsp-test-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log_file);
    let options = json!({"logFile": log_file.to_str().unwrap(), "logLevel": "info"});
    client.initialize(&["utf-16"], model_options(options), json!({}));
    let status = client.wait_for_model();
    assert_eq!(status["model"], "ready");
    // The status says where the model runs and what it holds.
    let summary = status["modelSummary"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        summary.starts_with("cpu, f32 compute, ") && summary.ends_with(" GB of weights"),
        "{status}"
    );
    // Loading reported progress from begin to end.
    let load = |kind: &str| {
        let kind = kind.to_string();
        move |m: &Value| {
            m["method"] == "$/progress"
                && m["params"]["token"] == "deepseek/load/completion"
                && m["params"]["value"]["kind"] == kind
        }
    };
    client.wait_for("load progress begin", load("begin"));
    let end = client.wait_for("load progress end", load("end"));
    assert_eq!(
        end["params"]["value"]["message"],
        format!("ready: {summary}")
    );
    client.open(URI, "python", SOURCE);

    let reply = client.request("textDocument/inlineCompletion", inline_params(URI, 1, 4));
    let items = reply["result"]["items"]
        .as_array()
        .unwrap_or_else(|| panic!("{reply}"))
        .clone();
    assert_eq!(items.len(), 1, "{reply}");
    let item = &items[0];
    assert_eq!(item["range"]["start"], position(1, 4));
    let text = item["insertText"].as_str().unwrap().to_string();
    assert!(!text.trim().is_empty());
    // The same request again gives the same suggestion (served from the recent suggestions).
    let again = client.request("textDocument/inlineCompletion", inline_params(URI, 1, 4));
    assert_eq!(again["result"]["items"][0]["insertText"], text.as_str());

    let reply = client.request(
        "textDocument/completion",
        json!({"textDocument": {"uri": URI}, "position": position(1, 4)}),
    );
    let list = &reply["result"];
    assert_eq!(list["isIncomplete"], true);
    let item = &list["items"][0];
    assert_eq!(
        item["textEdit"]["newText"],
        text.as_str(),
        "the whole suggestion in the edit"
    );
    assert_eq!(item["textEdit"]["range"]["start"], position(1, 4));
    let label = item["label"].as_str().unwrap();
    assert!(
        label.chars().count() <= 60 && !label.contains('\n'),
        "short label: {label:?}"
    );
    client.shutdown();
}

#[test]
fn typing_the_suggestion_serves_the_rest_without_the_model() {
    let mut client = Client::start(&[]);
    client.initialize(&["utf-16"], model_options(json!({})), json!({}));
    client.wait_for_model();
    client.open(URI, "python", SOURCE);
    let first = client.request("textDocument/inlineCompletion", inline_params(URI, 1, 4));
    let text = first["result"]["items"][0]["insertText"]
        .as_str()
        .unwrap()
        .to_string();
    let typed: String = text.chars().take(1).collect();
    let submitted =
        client.request("deepseek/status", Value::Null)["result"]["engine"]["submitted"].clone();
    client.notify(
        "textDocument/didChange",
        json!({"textDocument": {"uri": URI, "version": 2}, "contentChanges": [{"range": {"start": position(1, 4), "end": position(1, 4)}, "text": typed}]}),
    );
    let units = typed.encode_utf16().count() as u32;
    let rest = client.request(
        "textDocument/inlineCompletion",
        inline_params(URI, 1, 4 + units),
    );
    assert_eq!(
        rest["result"]["items"][0]["insertText"].as_str().unwrap(),
        &text[typed.len()..]
    );
    let after =
        client.request("deepseek/status", Value::Null)["result"]["engine"]["submitted"].clone();
    assert_eq!(submitted, after, "no model call for the rest");
    client.shutdown();
}

#[test]
fn superseded_and_cancelled_requests_are_all_answered_and_stopped() {
    let mut client = Client::start(&[]);
    // A long debounce: a replaced request is answered as soon as the newer one arrives, and the
    // newest is still waiting when its cancellation arrives, however loaded the machine is.
    client.initialize(
        &["utf-16"],
        model_options(json!({"maxTokens": 100000, "debounceMs": 3000})),
        json!({}),
    );
    client.wait_for_model();
    let long_source = "x = 1\n".repeat(3);
    client.open(URI, "python", &long_source);
    let ids: Vec<i64> = (0..3)
        .map(|_| client.start_request("textDocument/inlineCompletion", inline_params(URI, 3, 0)))
        .collect();
    // The newest one supersedes the two before it...
    for (i, id) in ids[..2].iter().enumerate() {
        let reply = client.reply(*id);
        assert_eq!(
            reply["error"]["code"], REQUEST_CANCELLED,
            "request {i} was superseded: {reply}"
        );
    }
    // ...which is then cancelled explicitly.
    client.notify("$/cancelRequest", json!({"id": ids[2]}));
    let reply = client.reply(ids[2]);
    assert_eq!(
        reply["error"]["code"], REQUEST_CANCELLED,
        "request 2 was cancelled: {reply}"
    );
    // Nothing keeps generating once every request is answered.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let engine = client.request("deepseek/status", Value::Null)["result"]["engine"].clone();
        if engine["finished"] == engine["submitted"] {
            let steps = engine["decodeSteps"]
                .as_u64()
                .unwrap_or(engine["decode_steps"].as_u64().unwrap_or(0));
            std::thread::sleep(Duration::from_millis(200));
            let later = client.request("deepseek/status", Value::Null)["result"]["engine"].clone();
            let later_steps = later["decodeSteps"]
                .as_u64()
                .unwrap_or(later["decode_steps"].as_u64().unwrap_or(0));
            assert_eq!(steps, later_steps, "no decoding after the last answer");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "generations kept running: {engine}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    client.shutdown();
}

fn code_action_params(uri: &str, start: Value, end: Value, diagnostics: Value) -> Value {
    json!({"textDocument": {"uri": uri}, "range": {"start": start, "end": end}, "context": {"diagnostics": diagnostics}})
}

const RUST_URI: &str = "file:///work/lib.rs";
const RUST_SOURCE: &str = "use std::fmt;\n\nfn add(a: i32, b: i32) -> i32 {\n    a + b\n}\n";

#[test]
fn code_actions_resolve_to_workspace_edits() {
    let mut client = Client::start(&[]);
    let resolve =
        json!({"textDocument": {"codeAction": {"resolveSupport": {"properties": ["edit"]}}}});
    client.initialize(
        &["utf-16"],
        model_options(json!({"chatMaxTokens": 8})),
        resolve,
    );
    client.wait_for_model();
    client.open(RUST_URI, "rust", RUST_SOURCE);
    let diagnostic = json!({"range": {"start": position(3, 4), "end": position(3, 5)}, "message": "cannot find value `a`", "severity": 1});
    let reply = client.request(
        "textDocument/codeAction",
        code_action_params(
            RUST_URI,
            position(3, 4),
            position(3, 4),
            json!([diagnostic]),
        ),
    );
    let actions = reply["result"].as_array().unwrap().clone();
    let titles: Vec<&str> = actions
        .iter()
        .map(|a| a["title"].as_str().unwrap())
        .collect();
    assert_eq!(titles.len(), 4, "{titles:?}");
    assert!(titles[0].starts_with("Explain"));
    assert!(titles[1].starts_with("Fix with DeepSeek: cannot find value `a`"));
    assert_eq!(actions[1]["kind"], "quickfix");
    // The empty selection targets the enclosing function: lines 2-4.
    let function = json!({"start": position(2, 0), "end": position(4, 1)});
    for action in &actions[1..] {
        assert!(
            action.get("edit").is_none(),
            "edits are computed on resolve"
        );
        let resolved = client.request("codeAction/resolve", action.clone());
        let edits = resolved["result"]["edit"]["changes"][RUST_URI]
            .as_array()
            .unwrap_or_else(|| panic!("{resolved}"))
            .clone();
        assert_eq!(edits.len(), 1);
        let range = &edits[0]["range"];
        match action["title"].as_str().unwrap() {
            t if t.starts_with("Fix") => {
                assert_eq!(range, &function, "a fix replaces the function")
            }
            t if t.starts_with("Add documentation") => {
                assert_eq!(
                    range,
                    &json!({"start": position(2, 0), "end": position(2, 0)}),
                    "inserted above it"
                )
            }
            t if t.starts_with("Write a unit test") => {
                assert_eq!(
                    range,
                    &json!({"start": position(4, 1), "end": position(4, 1)}),
                    "inserted after it"
                )
            }
            other => panic!("unexpected action {other}"),
        }
    }
    client.shutdown();
}

#[test]
fn without_resolve_support_actions_apply_through_execute_command() {
    let mut client = Client::start(&[]);
    client.initialize(
        &["utf-16"],
        model_options(json!({"chatMaxTokens": 8})),
        json!({}),
    );
    client.wait_for_model();
    client.open(RUST_URI, "rust", RUST_SOURCE);
    let reply = client.request(
        "textDocument/codeAction",
        code_action_params(RUST_URI, position(2, 0), position(4, 1), json!([])),
    );
    let test_action = reply["result"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| {
            a["title"]
                .as_str()
                .unwrap()
                .starts_with("Write a unit test")
        })
        .unwrap()
        .clone();
    let command = &test_action["command"];
    assert_eq!(command["command"], "deepseek.applyAction");
    let reply = client.request(
        "workspace/executeCommand",
        json!({"command": command["command"], "arguments": command["arguments"]}),
    );
    assert!(reply.get("error").is_none(), "{reply}");
    let apply = client.wait_for("workspace/applyEdit", |m| {
        m["method"] == "workspace/applyEdit"
    });
    let edits = &apply["params"]["edit"]["changes"][RUST_URI];
    assert_eq!(edits[0]["range"]["start"], position(4, 1));
    client.shutdown();
}

#[test]
fn explain_streams_progress_and_returns_markdown() {
    let mut client = Client::start(&[]);
    client.initialize(
        &["utf-16"],
        model_options(json!({"chatMaxTokens": 12})),
        json!({}),
    );
    client.wait_for_model();
    client.open(RUST_URI, "rust", RUST_SOURCE);
    let reply = client.request(
        "deepseek/explain",
        json!({"textDocument": {"uri": RUST_URI}, "range": {"start": position(2, 0), "end": position(4, 1)}, "workDoneToken": "explain-1"}),
    );
    let markdown = reply["result"]["markdown"]
        .as_str()
        .unwrap_or_else(|| panic!("{reply}"))
        .to_string();
    // The reply and the notifications travel separately: the end may arrive after the reply.
    client.wait_for("the end of the explain progress", |m| {
        m["method"] == "$/progress"
            && m["params"]["token"] == "explain-1"
            && m["params"]["value"]["kind"] == "end"
    });
    let progress: Vec<Value> = client
        .log
        .iter()
        .filter(|m| m["method"] == "$/progress" && m["params"]["token"] == "explain-1")
        .map(|m| m["params"]["value"].clone())
        .collect();
    assert_eq!(progress.first().unwrap()["kind"], "begin");
    assert_eq!(progress.last().unwrap()["kind"], "end");
    let streamed: String = progress
        .iter()
        .filter(|v| v["kind"] == "report")
        .filter_map(|v| v["message"].as_str())
        .collect();
    assert_eq!(
        streamed, markdown,
        "the reports carry the text as it is written"
    );
    assert!(!markdown.is_empty());
    // The same through workspace/executeCommand.
    let reply = client.request(
        "workspace/executeCommand",
        json!({"command": "deepseek.explain", "arguments": [{"textDocument": {"uri": RUST_URI}, "range": {"start": position(2, 0), "end": position(4, 1)}}]}),
    );
    assert_eq!(reply["result"]["markdown"], markdown.as_str());
    client.shutdown();
}

#[test]
fn configuration_errors_are_named_and_defaults_kept() {
    let mut client = Client::start(&[]);
    client.configuration = json!({"suffixWindow": -3});
    client.initialize(
        &["utf-16"],
        json!({"maxTokenz": 5, "temperature": "warm", "debounceMs": 0}),
        json!({"workspace": {"configuration": true}}),
    );
    let warning = |client: &mut Client, key: &str| {
        let needle = format!("`{key}`");
        client.wait_for(key, |m| {
            m["method"] == "window/showMessage"
                && m["params"]["message"]
                    .as_str()
                    .is_some_and(|s| s.contains(&needle))
        })
    };
    assert_eq!(
        warning(&mut client, "maxTokenz")["params"]["type"],
        2,
        "a warning"
    );
    warning(&mut client, "temperature");
    warning(&mut client, "suffixWindow");
    client.notify(
        "workspace/didChangeConfiguration",
        json!({"settings": {"singleLine": "yes"}}),
    );
    warning(&mut client, "singleLine");
    // Still serving, with the built-in model (no model is configured).
    let status = client.request("deepseek/status", Value::Null)["result"]["model"].clone();
    assert!(
        status == "loading" || status == "ready",
        "the built-in model loads: {status}"
    );
    client.shutdown();
}

#[test]
fn a_model_that_fails_to_load_is_reported_once_and_completions_stay_empty() {
    let mut client = Client::start(&[]);
    client.initialize(
        &["utf-16"],
        json!({"model": "/no/such/model", "debounceMs": 0}),
        json!({}),
    );
    let status = client.wait_for_model();
    assert_eq!(status["model"], "failed");
    assert!(
        status["modelError"]
            .as_str()
            .unwrap()
            .contains("/no/such/model does not exist")
    );
    client.open(URI, "python", SOURCE);
    for _ in 0..3 {
        let reply = client.request("textDocument/inlineCompletion", inline_params(URI, 1, 4));
        assert_eq!(reply["result"]["items"], json!([]));
    }
    // Notifications may trail the replies: wait for the error before counting.
    client.wait_for("the load error", |m| {
        m["method"] == "window/showMessage" && m["params"]["type"] == 1
    });
    let errors = client
        .log
        .iter()
        .filter(|m| m["method"] == "window/showMessage" && m["params"]["type"] == 1)
        .count();
    assert_eq!(errors, 1, "one error message, not a storm");
    client.shutdown();
}

#[test]
fn bad_input_never_kills_the_server() {
    let mut client = Client::start(&[]);
    client.initialize(&["utf-16"], model_options(json!({})), json!({}));
    client.wait_for_model();
    client.open(URI, "python", SOURCE);

    // Malformed JSON: an error reply with a null id, then business as usual.
    let broken = br#"{"jsonrpc":2,"#;
    client.send_raw(format!("Content-Length: {}\r\n\r\n", broken.len()).as_bytes());
    client.send_raw(broken);
    let deadline = Instant::now() + TIMEOUT;
    let parse_error = loop {
        let message = client.next_message(deadline).expect("a parse error reply");
        if message.get("method").is_none()
            && message["id"].is_null()
            && message.get("error").is_some()
        {
            break message;
        }
    };
    assert!(parse_error["error"]["code"].as_i64().unwrap() < 0);
    // A wrong Content-Length swallows what follows it; the server then finds its footing again.
    client.send_raw(
        b"Content-Length: 5\r\n\r\n{\"jsonrpc\":\"2.0\",\"method\":\"initialized\",\"params\":{}}",
    );
    client.send_raw(b"Content-Length: 3\r\n\r\n{}}");
    // Unknown methods, positions past the end, edits to unknown documents.
    let reply = client.request("custom/unknown", json!({}));
    assert_eq!(reply["error"]["code"], -32601);
    let reply = client.request("textDocument/inlineCompletion", inline_params(URI, 99, 0));
    assert_eq!(reply["error"]["code"], -32602, "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("outside the document")
    );
    let reply = client.request(
        "textDocument/inlineCompletion",
        inline_params("file:///never/opened.py", 0, 0),
    );
    assert_eq!(reply["error"]["code"], -32602);
    client.notify(
        "textDocument/didChange",
        json!({"textDocument": {"uri": "file:///never/opened.py", "version": 2}, "contentChanges": [{"text": "x"}]}),
    );
    client.notify(
        "textDocument/didChange",
        json!({"textDocument": {"uri": URI, "version": 2}, "contentChanges": [{"range": {"start": position(50, 0), "end": position(50, 1)}, "text": "x"}]}),
    );
    // A 20 MB document opens and completes from a window around the cursor.
    let big: String =
        "# filler line of a very large generated file\n".repeat(20 * 1024 * 1024 / 45);
    let big_uri = "file:///work/big.py";
    client.open(big_uri, "python", &big);
    let lines = big.lines().count() as u32;
    let reply = client.request(
        "textDocument/inlineCompletion",
        inline_params(big_uri, lines, 0),
    );
    assert!(reply["result"]["items"].is_array(), "{reply}");
    assert_eq!(
        client.request("deepseek/status", Value::Null)["result"]["documents"],
        2
    );
    client.shutdown();
}

fn file_uri(path: &std::path::Path) -> String {
    format!("file://{}", path.display())
}

#[test]
fn completions_take_context_from_the_indexed_workspace() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let app_path = shop_workspace(&root);
    let app = support::SHOP_APP;

    let mut client = Client::start(&[]);
    client.initialize_with(
        &["utf-16"],
        // The fixture model's window (128 positions) would cut the default budget.
        model_options(json!({"contextBudget": 4096})),
        json!({"workspace": {"didChangeWatchedFiles": {"dynamicRegistration": true}}}),
        json!({"workspaceFolders": [{"uri": file_uri(&root), "name": "shop"}]}),
    );
    client.wait_for_model();
    // Indexing reports progress and ends with its figures; the watcher is registered.
    let end = client.wait_for("the end of indexing", |m| {
        m["method"] == "$/progress"
            && m["params"]["token"]
                .as_str()
                .is_some_and(|t| t.starts_with("deepseek/index"))
            && m["params"]["value"]["kind"] == "end"
    });
    assert!(
        end["params"]["value"]["message"]
            .as_str()
            .unwrap()
            .starts_with("2 files"),
        "{end}"
    );
    client.wait_for("the file watcher registration", |m| {
        m["method"] == "client/registerCapability"
            && m["params"]["registrations"][0]["method"] == "workspace/didChangeWatchedFiles"
    });
    let status = client.request("deepseek/status", Value::Null);
    assert_eq!(status["result"]["indexedFiles"], 2);

    let app_uri = file_uri(&app_path);
    client.open(&app_uri, "python", app);
    let context = client.request(
        "deepseek/context",
        json!({"textDocument": {"uri": app_uri}, "position": position(5, 4)}),
    )["result"]
        .clone();
    let prompt = context["prompt"].as_str().unwrap();
    assert!(
        prompt
            .contains("# shop/pricing.py\ndef net_price(gross: float, vat_rate: float) -> float:"),
        "{prompt}"
    );
    assert!(
        !prompt.contains("stale_net_price"),
        "ignored files stay out"
    );
    assert_eq!(context["blocks"][0]["kind"], "import");
    assert_eq!(context["blocks"][0]["reason"], "imported: net_price");
    assert!(context["promptTokens"].as_u64().unwrap() <= 4096);

    // A change on disk, reported by the watcher, reaches the next prompt.
    write_file(
        &root,
        "shop/pricing.py",
        "def net_price(gross: float, vat_rate: float, rounding: int = 2) -> float:\n    return round(gross / (1 + vat_rate), rounding)\n",
    );
    client.notify(
        "workspace/didChangeWatchedFiles",
        json!({"changes": [{"uri": file_uri(&root.join("shop/pricing.py")), "type": 2}]}),
    );
    let context = client.request(
        "deepseek/context",
        json!({"textDocument": {"uri": app_uri}, "position": position(5, 4)}),
    )["result"]
        .clone();
    assert!(
        context["prompt"]
            .as_str()
            .unwrap()
            .contains("rounding: int = 2) -> float:"),
        "{context}"
    );

    // Unsaved edits in another open file come along as recent context.
    let pricing_uri = file_uri(&root.join("shop/pricing.py"));
    let pricing = std::fs::read_to_string(root.join("shop/pricing.py")).unwrap();
    client.open(&pricing_uri, "python", &pricing);
    client.notify(
        "textDocument/didChange",
        json!({"textDocument": {"uri": pricing_uri, "version": 2}, "contentChanges": [{"range": {"start": position(2, 0), "end": position(2, 0)}, "text": "\n\ndef gross_price(net: float) -> float:\n    return net * 1.2\n"}]}),
    );
    let context = client.request(
        "deepseek/context",
        json!({"textDocument": {"uri": app_uri}, "position": position(5, 4)}),
    )["result"]
        .clone();
    let kinds: Vec<&str> = context["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"recent"), "{context}");
    assert!(
        context["prompt"]
            .as_str()
            .unwrap()
            .contains("def gross_price(net: float) -> float:")
    );
    // A workspace folder added later is indexed too; turning the index off empties it.
    let extra = tempfile::tempdir().unwrap();
    std::fs::write(
        extra.path().join("tax.py"),
        "def vat(x):\n    return x * 0.2\n",
    )
    .unwrap();
    let extra_root = extra.path().canonicalize().unwrap();
    client.notify(
        "workspace/didChangeWorkspaceFolders",
        json!({"event": {"added": [{"uri": file_uri(&extra_root), "name": "tax"}], "removed": []}}),
    );
    let deadline = Instant::now() + TIMEOUT;
    while client.request("deepseek/status", Value::Null)["result"]["indexedFiles"] != 3 {
        assert!(
            Instant::now() < deadline,
            "the added folder was never indexed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    client.notify(
        "workspace/didChangeConfiguration",
        json!({"settings": {"workspaceIndex": false}}),
    );
    let deadline = Instant::now() + TIMEOUT;
    while client.request("deepseek/status", Value::Null)["result"]["indexedFiles"] != 0 {
        assert!(
            Instant::now() < deadline,
            "the index stayed after workspaceIndex: false"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // And a completion runs through the same prompt.
    let reply = client.request(
        "textDocument/inlineCompletion",
        inline_params(&app_uri, 5, 4),
    );
    assert!(reply.get("result").is_some(), "{reply}");
    client.shutdown();
}

/// Helix's pattern: it asks for completion items once two characters of a word are typed and
/// the user has paused for 250 ms, keeps typing while the answer is on its way, and never
/// cancels a request. Every request must be answered, and every answer must be something
/// Helix's menu shows well: one item at most, a one-line label, the whole text in a `textEdit`
/// on the cursor line that starts where the typed word starts (Helix filters by that word).
#[test]
fn helix_typing_pattern_gets_an_answer_per_request_in_the_shape_helix_renders() {
    let mut client = Client::start(&[]);
    // The fixture model: its suggestions are noise, but there are some in every reply, so
    // every shape check below runs. One-line suggestions, as the Helix guide sets.
    client.initialize(
        &["utf-8", "utf-32", "utf-16"],
        model_options(json!({"singleLine": true, "maxTokens": 24})),
        json!({"textDocument": {"completion": {"completionItem": {"snippetSupport": true}}}}),
    );
    client.wait_for_model();
    let uri = "file:///work/totals.py";
    let mut text = String::from("def total(items):\n    \n");
    client.open(uri, "python", &text);
    let typed = "result = sum(item.price for item in items)";
    let line = 1u32;
    let mut requests = Vec::new();
    let mut word_length = 0;
    for (i, c) in typed.chars().enumerate() {
        let column = 4 + i as u32;
        let line_start = text.find('\n').unwrap() + 1;
        text.insert(line_start + column as usize, c);
        client.notify(
            "textDocument/didChange",
            json!({"textDocument": {"uri": uri, "version": i + 2},
                   "contentChanges": [{"range": {"start": position(line, column), "end": position(line, column)}, "text": c.to_string()}]}),
        );
        word_length = if c.is_alphanumeric() || c == '_' {
            word_length + 1
        } else {
            0
        };
        if word_length == 2 {
            std::thread::sleep(Duration::from_millis(250));
            let cursor = position(line, column + 1);
            let id = client.start_request(
                "textDocument/completion",
                json!({"textDocument": {"uri": uri}, "position": cursor, "context": {"triggerKind": 1}}),
            );
            requests.push((id, column + 1, text.lines().nth(1).unwrap().to_string()));
        } else {
            std::thread::sleep(Duration::from_millis(40));
        }
    }
    assert!(
        requests.len() >= 8,
        "the pattern sent {} requests",
        requests.len()
    );
    let mut shown = 0;
    let last = requests.last().unwrap().0;
    for (id, column, line_text) in &requests {
        let reply = client.reply(*id);
        if reply["error"]["code"] == REQUEST_CANCELLED && *id != last {
            // A newer request for the document took over; Helix drops such answers quietly.
            continue;
        }
        // The last request has no newer one behind it: it gets a result.
        let list = &reply["result"];
        assert_eq!(list["isIncomplete"], true, "{reply}");
        let items = list["items"].as_array().unwrap();
        assert!(items.len() <= 1, "{reply}");
        for item in items {
            shown += 1;
            let label = item["label"].as_str().unwrap();
            assert!(
                !label.contains('\n') && label.chars().count() <= 60,
                "{item}"
            );
            let edit = &item["textEdit"];
            let new_text = edit["newText"].as_str().unwrap();
            assert!(!new_text.contains('\n'), "singleLine: {item}");
            assert_eq!(edit["range"]["start"]["line"], line);
            assert_eq!(edit["range"]["end"]["line"], line);
            let start = edit["range"]["start"]["character"].as_u64().unwrap() as u32;
            let end = edit["range"]["end"]["character"].as_u64().unwrap() as u32;
            assert!(
                start < *column && *column <= end,
                "the edit covers the cursor: {item}"
            );
            let word = &line_text[start as usize..*column as usize];
            assert!(
                word.chars().all(|c| c.is_alphanumeric() || c == '_'),
                "the edit starts at the typed word: {word:?} in {line_text:?}"
            );
            assert!(new_text.starts_with(word), "{item}");
            assert!(
                item["filterText"].as_str().unwrap().starts_with(word),
                "Helix filters by the typed word: {item}"
            );
        }
    }
    println!("{} requests, {shown} items shown", requests.len());
    assert!(shown >= requests.len() / 2, "items to check: {shown}");
    client.shutdown();
}

#[test]
fn a_gguf_model_loads_and_serves_suggestions() {
    let mut client = Client::start(&[]);
    let model = fixture("gguf/lite-q8_0.gguf");
    client.initialize(
        &["utf-16"],
        model_options(json!({"model": model.to_str().unwrap()})),
        json!({}),
    );
    assert_eq!(client.wait_for_model()["model"], "ready");
    client.open(URI, "python", SOURCE);
    let reply = client.request("textDocument/inlineCompletion", inline_params(URI, 1, 4));
    let text = reply["result"]["items"][0]["insertText"].clone();
    assert!(
        text.as_str().is_some_and(|t| !t.trim().is_empty()),
        "{reply}"
    );
    client.shutdown();
}
