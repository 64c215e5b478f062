//! Logs: `tracing` to stderr (stdout carries the protocol), optionally to a file, and errors
//! forwarded to the client as `window/logMessage` once a server is running.

use std::io::Write;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use tokio::sync::mpsc::UnboundedSender;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

static FILE: Mutex<Option<std::fs::File>> = Mutex::new(None);
static FORWARD: Mutex<Option<UnboundedSender<String>>> = Mutex::new(None);
static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Installs the logger. `DEEPSEEK_LSP_LOG` (any tracing filter) wins over `default_level`.
pub fn init(default_level: &str) {
    let filter = EnvFilter::try_from_env("DEEPSEEK_LSP_LOG")
        .unwrap_or_else(|_| EnvFilter::new(default_level));
    let (filter, handle) = reload::Layer::new(filter);
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(|| Tee)
        .with_target(false)
        .with_ansi(false);
    if tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(ClientForwarding)
        .try_init()
        .is_ok()
    {
        let _ = FILTER.set(handle);
    }
}

/// Changes the level at run time (from settings), unless the environment fixed it.
pub fn set_level(level: &str) {
    if std::env::var_os("DEEPSEEK_LSP_LOG").is_some() {
        return;
    }
    if let Some(handle) = FILTER.get() {
        let _ = handle.modify(|filter| *filter = EnvFilter::new(level));
    }
}

/// Also appends logs to `path` (`None` stops).
pub fn set_file(path: Option<&Path>) -> std::io::Result<()> {
    let file = path
        .map(|p| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
        })
        .transpose()?;
    *FILE.lock().unwrap_or_else(|e| e.into_inner()) = file;
    Ok(())
}

/// Sends every error logged from now on to `sender` as well.
pub fn forward_errors(sender: UnboundedSender<String>) {
    *FORWARD.lock().unwrap_or_else(|e| e.into_inner()) = Some(sender);
}

/// stderr, plus the log file when one is set.
struct Tee;

impl Write for Tee {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if let Some(file) = FILE.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            let _ = file.write_all(bytes);
        }
        std::io::stderr().write_all(bytes)?;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

struct ClientForwarding;

impl<S: Subscriber> Layer<S> for ClientForwarding {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        if *event.metadata().level() != Level::ERROR {
            return;
        }
        let forward = FORWARD.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sender) = forward.as_ref() {
            let mut message = String::new();
            event.record(&mut MessageVisitor(&mut message));
            let _ = sender.send(message);
        }
    }
}

struct MessageVisitor<'a>(&'a mut String);

impl tracing::field::Visit for MessageVisitor<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0.push_str(&format!("{value:?}"));
        }
    }
}
