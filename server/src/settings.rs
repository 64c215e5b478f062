//! The server's settings, read from `initializationOptions`, `workspace/didChangeConfiguration`
//! and `workspace/configuration` (section `deepseek`). Unknown keys and bad values produce a
//! warning that names the key; the previous value is kept.

use std::collections::BTreeMap;
use std::path::PathBuf;

use engine::DeviceChoice;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Model directory for completions (and chat when `chat_model` is unset).
    pub model: Option<PathBuf>,
    /// An instruction-tuned model for explain and code actions.
    pub chat_model: Option<PathBuf>,
    pub device: String,
    pub threads: Option<usize>,
    /// Most tokens a completion may generate; 0 skips the model (a measuring aid).
    pub max_tokens: usize,
    /// Most tokens an explanation or code action may generate.
    pub chat_max_tokens: usize,
    pub temperature: f32,
    /// Tokens a completion prompt may take in all: workspace context, the file around the
    /// cursor and the special tokens, counted with the model's tokenizer. `None`: the default,
    /// cut to fit the model's context window (see [`Settings::prompt_budget`]).
    pub context_budget: Option<usize>,
    /// Lines after the cursor given to fill-in-the-middle.
    pub suffix_window: usize,
    pub debounce_ms: u64,
    /// Only ever suggest the rest of the current line.
    pub single_line: bool,
    /// Per-language switches by LSP language id; absent languages are enabled.
    pub languages: BTreeMap<String, bool>,
    /// Bytes for the prefix cache; `None` for the engine's default.
    pub cache_budget: Option<usize>,
    pub log_level: String,
    pub log_file: Option<PathBuf>,
    /// Index the workspace folders for cross-file context.
    pub workspace_index: bool,
    /// Files larger than this many bytes are not indexed.
    pub max_file_size: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            model: None,
            chat_model: None,
            device: DeviceChoice::Auto.to_string(),
            threads: None,
            max_tokens: 64,
            chat_max_tokens: 512,
            temperature: 0.0,
            context_budget: None,
            suffix_window: 64,
            debounce_ms: 20,
            single_line: false,
            languages: BTreeMap::new(),
            cache_budget: None,
            log_level: "warn".into(),
            log_file: None,
            workspace_index: true,
            max_file_size: 1 << 20,
        }
    }
}

/// The keys users may set, as they write them.
pub const KEYS: &[&str] = &[
    "model",
    "chatModel",
    "device",
    "threads",
    "maxTokens",
    "chatMaxTokens",
    "temperature",
    "contextBudget",
    "suffixWindow",
    "debounceMs",
    "singleLine",
    "languages",
    "cacheBudget",
    "logLevel",
    "logFile",
    "workspaceIndex",
    "maxFileSize",
];

impl Settings {
    /// The prompt budget for a model with `context_window` positions: `contextBudget` when the
    /// user set it, else the default cut to leave room for `maxTokens` in the window.
    pub fn prompt_budget(&self, context_window: usize) -> usize {
        self.context_budget.unwrap_or_else(|| {
            crate::completion::default_prompt_budget(context_window, self.max_tokens)
        })
    }

    /// Whether completions are on for `language_id`.
    pub fn enabled_for(&self, language_id: &str) -> bool {
        self.languages.get(language_id).copied().unwrap_or(true)
    }

    /// Applies the keys present in `value` (an object, possibly wrapped as `{"deepseek": {...}}`)
    /// on top of `self`; returns one warning per unknown key or bad value.
    pub fn update(&mut self, value: &Value) -> Vec<String> {
        let mut warnings = Vec::new();
        let object = match value {
            Value::Null => return warnings,
            Value::Object(map) => match map.get("deepseek") {
                Some(Value::Object(inner)) if map.len() == 1 => inner,
                _ => map,
            },
            other => {
                warnings.push(format!(
                    "settings must be an object, got {other}; keeping the current settings"
                ));
                return warnings;
            }
        };
        for (key, value) in object {
            if let Err(problem) = self.set(key, value) {
                warnings.push(problem);
            }
        }
        warnings
    }

    fn set(&mut self, key: &str, value: &Value) -> Result<(), String> {
        let bad = |expected: &str| {
            format!("setting `{key}`: expected {expected}, got {value}; keeping the previous value")
        };
        match key {
            "model" => self.model = optional_path(value).ok_or_else(|| bad("a directory path"))?,
            "chatModel" => {
                self.chat_model = optional_path(value).ok_or_else(|| bad("a directory path"))?
            }
            "device" => {
                let choice = value
                    .as_str()
                    .and_then(|text| text.parse::<DeviceChoice>().ok())
                    .ok_or_else(|| bad("\"auto\", \"cpu\", \"cuda\" or \"cuda:N\""))?;
                self.device = choice.to_string();
            }
            "threads" => {
                self.threads =
                    optional_count(value, 1).ok_or_else(|| bad("a positive integer or null"))?
            }
            "maxTokens" => {
                self.max_tokens = count(value, 0).ok_or_else(|| bad("a non-negative integer"))?
            }
            "chatMaxTokens" => {
                self.chat_max_tokens = count(value, 1).ok_or_else(|| bad("a positive integer"))?
            }
            "temperature" => {
                self.temperature = value
                    .as_f64()
                    .filter(|t| (0.0..=5.0).contains(t))
                    .ok_or_else(|| bad("a number from 0 to 5"))?
                    as f32
            }
            "contextBudget" => {
                self.context_budget =
                    Some(count(value, 16).ok_or_else(|| bad("an integer of at least 16"))?)
            }
            "suffixWindow" => {
                self.suffix_window = count(value, 0).ok_or_else(|| bad("a non-negative integer"))?
            }
            "debounceMs" => {
                self.debounce_ms =
                    count(value, 0).ok_or_else(|| bad("a non-negative integer"))? as u64
            }
            "workspaceIndex" => {
                self.workspace_index = value.as_bool().ok_or_else(|| bad("true or false"))?
            }
            "maxFileSize" => {
                self.max_file_size = match value {
                    Value::Number(n) => n
                        .as_u64()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| bad("bytes or a size such as \"1M\""))?
                        as usize,
                    Value::String(s) => {
                        parse_size(s).map_err(|_| bad("a size such as \"512K\" or \"2M\""))?
                    }
                    _ => return Err(bad("a size such as \"512K\" or \"2M\"")),
                }
            }
            "singleLine" => {
                self.single_line = value.as_bool().ok_or_else(|| bad("true or false"))?
            }
            "languages" => {
                let map = value
                    .as_object()
                    .ok_or_else(|| bad("an object such as {\"markdown\": false}"))?;
                let mut languages = BTreeMap::new();
                for (language, enabled) in map {
                    languages.insert(
                        language.clone(),
                        enabled
                            .as_bool()
                            .ok_or_else(|| bad("true or false per language"))?,
                    );
                }
                self.languages = languages;
            }
            "cacheBudget" => {
                self.cache_budget = match value {
                    Value::Null => None,
                    Value::Number(n) => Some(
                        n.as_u64()
                            .ok_or_else(|| bad("bytes or a size such as \"512M\""))?
                            as usize,
                    ),
                    Value::String(s) => {
                        Some(parse_size(s).map_err(|_| bad("a size such as \"512M\" or \"2G\""))?)
                    }
                    _ => return Err(bad("a size such as \"512M\" or \"2G\"")),
                }
            }
            "logLevel" => {
                let level = value
                    .as_str()
                    .ok_or_else(|| bad("error, warn, info, debug or trace"))?;
                if !["error", "warn", "info", "debug", "trace"].contains(&level) {
                    return Err(bad("error, warn, info, debug or trace"));
                }
                self.log_level = level.to_string();
            }
            "logFile" => self.log_file = optional_path(value).ok_or_else(|| bad("a file path"))?,
            _ => {
                return Err(format!(
                    "unknown setting `{key}` ignored; known settings: {}",
                    KEYS.join(", ")
                ));
            }
        }
        Ok(())
    }
}

fn optional_path(value: &Value) -> Option<Option<PathBuf>> {
    match value {
        Value::Null => Some(None),
        Value::String(s) if s.is_empty() => Some(None),
        Value::String(s) => Some(Some(expand_home(s))),
        _ => None,
    }
}

/// `~/x` -> `$HOME/x`, as users write paths in editor settings.
fn expand_home(path: &str) -> PathBuf {
    match (path.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(path),
    }
}

fn count(value: &Value, min: u64) -> Option<usize> {
    value.as_u64().filter(|n| *n >= min).map(|n| n as usize)
}

fn optional_count(value: &Value, min: u64) -> Option<Option<usize>> {
    match value {
        Value::Null => Some(None),
        other => count(other, min).map(Some),
    }
}

/// "512M", "2G", "64k" or plain bytes.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size such as 512M or 2G"))?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1u64,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => return Err(format!("unknown size unit `{other}`: use K, M or G")),
    };
    Ok((number * scale as f64) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn known_keys_apply_and_unknown_or_bad_ones_warn_by_name() {
        let mut settings = Settings::default();
        let warnings = settings.update(&json!({
            "maxTokens": 32, "singleLine": true, "languages": {"markdown": false},
            "cacheBudget": "512M", "temperature": "hot", "maxTokenz": 3
        }));
        assert_eq!(settings.max_tokens, 32);
        assert!(settings.single_line);
        assert!(!settings.enabled_for("markdown") && settings.enabled_for("rust"));
        assert_eq!(settings.cache_budget, Some(512 << 20));
        assert_eq!(
            settings.temperature, 0.0,
            "a bad value keeps the previous one"
        );
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("`temperature`") && w.contains("keeping the previous value"))
        );
        assert!(
            warnings
                .iter()
                .any(|w| w.starts_with("unknown setting `maxTokenz`"))
        );
    }

    #[test]
    fn a_deepseek_section_wrapper_is_accepted() {
        let mut settings = Settings::default();
        assert!(
            settings
                .update(&json!({"deepseek": {"debounceMs": 0}}))
                .is_empty()
        );
        assert_eq!(settings.debounce_ms, 0);
        assert!(settings.update(&Value::Null).is_empty());
        assert_eq!(settings.update(&json!([1])).len(), 1);
    }

    #[test]
    fn the_device_defaults_to_auto_and_bad_names_keep_the_previous_one() {
        let mut settings = Settings::default();
        assert_eq!(settings.device, "auto");
        assert!(settings.update(&json!({"device": "cuda"})).is_empty());
        assert_eq!(settings.device, "cuda:0");
        let warnings = settings.update(&json!({"device": "gpu"}));
        assert_eq!(settings.device, "cuda:0");
        assert!(warnings[0].contains("\"auto\", \"cpu\""), "{warnings:?}");
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("1.5k"), Ok(1536));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("12X").is_err());
    }
}
