//! Workspace intelligence: which files there are, what they define and import, and the context a
//! prompt gets from them. No tensors here; token counts come through a trait.

pub mod context;
pub mod index;
pub mod languages;
pub mod scan;
pub mod similar;
pub mod symbols;
pub mod tokens;
