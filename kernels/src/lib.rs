//! Compute kernels behind small safe functions.
//!
//! Architecture invariant: this crate knows nothing of models, configs or files; it takes
//! slices and sizes and returns numbers.

pub mod bandwidth;
pub mod causal_attention;
pub mod cuda;
pub mod expert_rows;
pub mod grouped_matmul;
pub mod matvec;
mod page_products;
pub mod paged_attention;
pub mod quant;
pub mod routing;
pub mod simd;
mod strided_gemm;
/// Seeded inputs for this crate's tests and benches; not an API.
#[doc(hidden)]
pub mod test_values;
