//! The language server (future issues). Architecture invariant: knows nothing of tensors.
