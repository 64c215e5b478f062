//! The language server and workspace intelligence: documents, positions, prompts.
//!
//! Architecture invariant: knows nothing of tensors; it hands the engine prompts and reads text.

pub mod completion;
pub mod documents;
pub mod explain;
pub mod indent_healing;
pub mod logging;
pub mod lsp;
pub mod position;
pub mod postprocess;
pub mod review;
pub mod settings;
pub mod suggestions;
pub mod syntax;
pub mod syntax_trim;
pub mod workspace;
