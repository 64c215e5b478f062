//! One-thread f32 matrix products on operands read in place through strides, as the attention
//! kernels multiply queries by keys that lie inside larger rows: `gemm` with its arguments
//! named.

/// A matrix as a product reads it: element (i, j) at `ptr + i row_stride + j col_stride`.
#[derive(Clone, Copy)]
pub(crate) struct Strided<P> {
    ptr: P,
    row_stride: isize,
    col_stride: isize,
}

impl<P> Strided<P> {
    /// Rows `row_stride` elements apart, each row's elements side by side.
    pub(crate) fn row_major(ptr: P, row_stride: usize) -> Self {
        Self {
            ptr,
            row_stride: row_stride as isize,
            col_stride: 1,
        }
    }

    /// Columns `col_stride` elements apart, each column's elements side by side: the transpose
    /// of a row-major matrix (keys stored a key a row, read as [dimension, key]).
    pub(crate) fn column_major(ptr: P, col_stride: usize) -> Self {
        Self {
            ptr,
            row_stride: 1,
            col_stride: col_stride as isize,
        }
    }
}

/// dst (m x n) = lhs (m x k) . rhs (k x n), plus dst's old values when `accumulate`, on the
/// calling thread.
///
/// # Safety
/// Every element the sizes and strides name lies in a live allocation, and `dst`'s elements
/// overlap neither operand's.
pub(crate) unsafe fn gemm_f32(
    (m, n, k): (usize, usize, usize),
    dst: Strided<*mut f32>,
    lhs: Strided<*const f32>,
    rhs: Strided<*const f32>,
    accumulate: bool,
) {
    // SAFETY: the caller's promise is gemm's.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.ptr,
            dst.col_stride,
            dst.row_stride,
            accumulate,
            lhs.ptr,
            lhs.col_stride,
            lhs.row_stride,
            rhs.ptr,
            rhs.col_stride,
            rhs.row_stride,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}
