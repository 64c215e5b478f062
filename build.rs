//! Embeds the default model, `models/tiny-coder/`, when its files are present: config.json,
//! tokenizer.json and model.safetensors. Without them, or with `DEEPSEEK_LSP_EMBED_MODEL=0` in
//! the build's environment (the device checks' binaries, which must travel small), the binary is
//! built without a default model and asks for `--model`.

use std::path::Path;

const MODEL_DIR: &str = "models/tiny-coder";
const FILES: [&str; 3] = ["config.json", "tokenizer.json", "model.safetensors"];

fn main() {
    println!("cargo:rerun-if-changed={MODEL_DIR}");
    println!("cargo:rerun-if-env-changed=DEEPSEEK_LSP_EMBED_MODEL");
    let wanted = std::env::var("DEEPSEEK_LSP_EMBED_MODEL").map_or(true, |v| v != "0");
    for file in FILES {
        println!("cargo:rerun-if-changed={MODEL_DIR}/{file}");
    }
    // Read at run time: a build script binary is shared by checkouts of the same package in one
    // target folder, and `env!` would bake in the folder it was first compiled for.
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let root = Path::new(&manifest_dir).join(MODEL_DIR);
    let complete = FILES.iter().all(|f| root.join(f).is_file());
    let entries: String = if wanted && complete {
        FILES
            .iter()
            .map(|f| format!("    ({f:?}, include_bytes!({:?})),\n", root.join(f)))
            .collect()
    } else {
        String::new()
    };
    let code = format!(
        "/// The embedded default model's files (empty when the build had none).\n\
         pub const EMBEDDED_MODEL: &[(&str, &[u8])] = &[\n{entries}];\n"
    );
    let out =
        Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("embedded_model.rs");
    std::fs::write(out, code).expect("OUT_DIR is writable");
}
