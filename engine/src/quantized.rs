//! Weights kept in their GGUF block format: a Q4_K expert matrix stays 4.5 bits a value in
//! memory (mapped from the file, not copied) and is multiplied in that form on the CPU.

use std::sync::Arc;

use kernels::quant::GgmlType;

use crate::error::{EngineError, Result};

/// Bytes that outlive the source they came from (a memory-mapped file, or an owned buffer).
pub type SharedBytes = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// A [rows, cols] matrix stored row by row in `ty`'s blocks, as llama.cpp lays it out.
#[derive(Clone)]
pub struct QuantizedWeight {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    data: SharedBytes,
    start: usize,
}

impl QuantizedWeight {
    /// The matrix at `data[start..]`; `name` is only for the error when the sizes disagree.
    pub fn new(
        name: &str,
        ty: GgmlType,
        rows: usize,
        cols: usize,
        data: SharedBytes,
        start: usize,
    ) -> Result<Self> {
        let row_bytes = ty.row_bytes(cols).ok_or_else(|| {
            EngineError::InvalidInput(format!(
                "tensor {name}: {cols} columns is not a whole number of {} blocks of {}",
                ty.name(),
                ty.block_len()
            ))
        })?;
        let end = rows
            .checked_mul(row_bytes)
            .and_then(|len| len.checked_add(start));
        if end.is_none_or(|end| end > (*data).as_ref().len()) {
            return Err(EngineError::InvalidInput(format!(
                "tensor {name}: {rows} x {cols} {} values run past the end of its data",
                ty.name()
            )));
        }
        Ok(Self {
            ty,
            rows,
            cols,
            data,
            start,
        })
    }

    /// The blocks, row after row.
    pub fn bytes(&self) -> &[u8] {
        let len = self.rows * self.ty.row_bytes(self.cols).unwrap_or(0);
        &(*self.data).as_ref()[self.start..self.start + len]
    }

    /// Rows `first..first + count` as a matrix of their own (an expert of a stacked tensor).
    pub fn rows(&self, name: &str, first: usize, count: usize) -> Result<Self> {
        let row_bytes = self.ty.row_bytes(self.cols).unwrap_or(0);
        if first + count > self.rows {
            return Err(EngineError::InvalidInput(format!(
                "tensor {name}: rows {first}..{} of {}",
                first + count,
                self.rows
            )));
        }
        Self::new(
            name,
            self.ty,
            count,
            self.cols,
            self.data.clone(),
            self.start + first * row_bytes,
        )
    }

    /// Every value as f32, row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        kernels::quant::dequantize(self.ty, self.bytes(), &mut out);
        out
    }
}

impl std::fmt::Debug for QuantizedWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} [{}, {}]", self.ty.name(), self.rows, self.cols)
    }
}
