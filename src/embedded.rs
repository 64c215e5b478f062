//! The default model built into the binary: written once to the user's cache folder (models
//! load by memory-mapping files) and used when neither `--model` nor the environment names one.

use std::hash::{Hash, Hasher};
use std::path::PathBuf;

include!(concat!(env!("OUT_DIR"), "/embedded_model.rs"));

/// Whether this build carries a default model.
pub fn available() -> bool {
    !EMBEDDED_MODEL.is_empty()
}

/// The embedded model's folder, written on first use. `None` when the build has no model.
pub fn model_dir() -> Result<Option<PathBuf>, String> {
    if !available() {
        return Ok(None);
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for (name, bytes) in EMBEDDED_MODEL {
        name.hash(&mut hasher);
        bytes.len().hash(&mut hasher);
        bytes[..bytes.len().min(1 << 16)].hash(&mut hasher);
    }
    let dir = cache_root().join(format!("tiny-coder-{:016x}", hasher.finish()));
    if EMBEDDED_MODEL.iter().all(|(name, bytes)| {
        std::fs::metadata(dir.join(name)).is_ok_and(|m| m.len() == bytes.len() as u64)
    }) {
        return Ok(Some(dir));
    }
    let cannot =
        |e: std::io::Error| format!("cannot write the built-in model to {}: {e}", dir.display());
    std::fs::create_dir_all(&dir).map_err(cannot)?;
    for (name, bytes) in EMBEDDED_MODEL {
        // Written beside, then renamed: a concurrent start never sees half a file.
        let partial = dir.join(format!("{name}.{}.partial", std::process::id()));
        std::fs::write(&partial, bytes).map_err(cannot)?;
        std::fs::rename(&partial, dir.join(name)).map_err(cannot)?;
    }
    Ok(Some(dir))
}

fn cache_root() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("deepseek-lsp")
}
