//! Opening a shared library the loader may or may not find (NVRTC, the CUDA driver).

use libloading::Library;

/// The file `variable` names, else `names` for the loader's search path.
pub(super) fn candidates(variable: &str, names: &[&str]) -> Vec<String> {
    match std::env::var_os(variable) {
        Some(path) => vec![std::path::PathBuf::from(path).display().to_string()],
        None => names.iter().map(|name| name.to_string()).collect(),
    }
}

/// The first of `candidates` the loader opens, with its name; else every failure, in the
/// loader's words, joined.
pub(super) fn open_first(candidates: &[String]) -> Result<(Library, String), String> {
    let mut failures = Vec::new();
    for candidate in candidates {
        // SAFETY: loading NVRTC or the CUDA driver runs their initialisers, which have no
        // preconditions.
        match unsafe { Library::new(candidate) } {
            Ok(library) => return Ok((library, candidate.clone())),
            Err(error) => failures.push(load_error(&error)),
        }
    }
    Err(failures.join("; "))
}

/// libloading's error with the loader's own words (its Display says only "dlopen failed").
fn load_error(error: &libloading::Error) -> String {
    match std::error::Error::source(error) {
        Some(source) => source.to_string(),
        None => error.to_string(),
    }
}
