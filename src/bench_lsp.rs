//! `deepseek-lsp bench lsp`: the server's own overhead per request, model excluded.
//!
//! Starts `deepseek-lsp serve` with `maxTokens: 0` (everything but the engine call runs: position
//! conversion, the completion window over the rope, syntax, the suggestion cache, the reply),
//! opens a large file, and times typing-then-requesting round trips from a client's side.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use serde_json::{Value, json};

struct Client {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    next_id: i64,
}

impl Client {
    fn start() -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
        let mut child = Command::new(exe)
            .arg("serve")
            .env("DEEPSEEK_LSP_LOG", "error")
            .env_remove("DEEPSEEK_LSP_MODEL")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start the server: {e}"))?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        Ok(Self {
            child,
            stdin,
            stdout,
            next_id: 0,
        })
    }

    fn send(&mut self, message: Value) -> Result<(), String> {
        let body = message.to_string();
        write!(self.stdin, "Content-Length: {}\r\n\r\n{body}", body.len())
            .and_then(|()| self.stdin.flush())
            .map_err(|e| format!("the server stopped reading: {e}"))
    }

    fn receive(&mut self) -> Result<Value, String> {
        let mut length = 0;
        loop {
            let mut line = String::new();
            if self
                .stdout
                .read_line(&mut line)
                .map_err(|e| e.to_string())?
                == 0
            {
                return Err("the server closed its output".into());
            }
            match line.trim_end() {
                "" => break,
                header => {
                    if let Some(n) = header.strip_prefix("Content-Length: ") {
                        length = n.parse().map_err(|_| format!("bad header {header}"))?;
                    }
                }
            }
        }
        let mut body = vec![0; length];
        self.stdout
            .read_exact(&mut body)
            .map_err(|e| e.to_string())?;
        serde_json::from_slice(&body).map_err(|e| e.to_string())
    }

    fn request(&mut self, method: &str, params: Value) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))?;
        loop {
            let message = self.receive()?;
            if message["id"] == id && message.get("method").is_none() {
                return Ok(message);
            }
        }
    }

    fn notify(&mut self, method: &str, params: Value) -> Result<(), String> {
        self.send(json!({"jsonrpc": "2.0", "method": method, "params": params}))
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Milliseconds at the 50th and 99th percentile and the maximum.
fn summary(mut samples: Vec<f64>) -> Value {
    samples.sort_by(f64::total_cmp);
    let at =
        |q: f64| samples[((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1];
    json!({"p50": at(0.5), "p99": at(0.99), "max": at(1.0), "samples": samples.len()})
}

pub fn run(lines: usize, requests: usize) -> Result<Value, String> {
    let mut client = Client::start()?;
    client.request(
        "initialize",
        json!({"processId": null, "capabilities": {"general": {"positionEncodings": ["utf-16"]}},
               "initializationOptions": {"maxTokens": 0, "debounceMs": 0}}),
    )?;
    client.notify("initialized", json!({}))?;
    let text: String = (0..lines)
        .map(|i| format!("def function_{i}(value):\n    return value * {i}  # café\n"))
        .collect();
    let uri = "file:///bench/large.py";
    client.notify(
        "textDocument/didOpen",
        json!({"textDocument": {"uri": uri, "languageId": "python", "version": 1, "text": text}}),
    )?;
    let line = lines; // the middle of the file: every function takes two lines
    let mut inline = Vec::with_capacity(requests);
    let mut completion = Vec::with_capacity(requests);
    for i in 0..requests {
        let column = 4 + i as u32;
        client.notify(
            "textDocument/didChange",
            json!({"textDocument": {"uri": uri, "version": i + 2},
                   "contentChanges": [{"range": {"start": {"line": line, "character": column}, "end": {"line": line, "character": column}}, "text": "x"}]}),
        )?;
        let position = json!({"line": line, "character": column + 1});
        let started = Instant::now();
        let reply = client.request(
            "textDocument/inlineCompletion",
            json!({"textDocument": {"uri": uri}, "position": position, "context": {"triggerKind": 2}}),
        )?;
        inline.push(started.elapsed().as_secs_f64() * 1e3);
        if reply.get("error").is_some() {
            return Err(format!("the server answered with an error: {reply}"));
        }
        let started = Instant::now();
        client.request(
            "textDocument/completion",
            json!({"textDocument": {"uri": uri}, "position": position}),
        )?;
        completion.push(started.elapsed().as_secs_f64() * 1e3);
    }
    client.request("shutdown", Value::Null)?;
    Ok(json!({
        "lines": lines * 2,
        "bytes": text.len(),
        "requests": requests,
        "inline_completion_ms": summary(inline),
        "completion_ms": summary(completion),
    }))
}
