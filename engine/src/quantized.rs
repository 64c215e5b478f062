//! Weights kept in their GGUF block format: a Q4_K expert matrix stays 4.5 bits a value in
//! memory and is multiplied in that form on the CPU, either mapped from the file as it is or
//! rearranged once at load into interleaved groups of eight rows (the same bytes in another
//! order, in memory of its own), which the kernels multiply several times faster.

use std::sync::Arc;

use kernels::quant::interleaved::{self, ROWS_TOGETHER};
use kernels::quant::{GgmlType, MatVecJob, RowLayout};

use crate::error::{EngineError, Result};
use crate::weight_arena::WeightArena;

/// Bytes that outlive the source they came from (a memory-mapped file, or an owned buffer).
pub type SharedBytes = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// A [rows, cols] matrix in `ty`'s blocks: row by row as llama.cpp lays it out, or rearranged
/// once into interleaved groups of eight rows ([`Self::interleaved`]) for faster products.
#[derive(Clone)]
pub struct QuantizedWeight {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub layout: RowLayout,
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
            layout: RowLayout::InFileOrder,
            data,
            start,
        })
    }

    /// The same matrix with its rows interleaved in groups of eight, in memory of its own from
    /// `arena` (the mapped file's pages are no longer needed), when its type has such a layout
    /// and its rows come in eights; otherwise itself. Every product gives the same values to
    /// float rounding, several times faster (the `quant_matmul` bench's x8 cases).
    pub fn interleaved(self, arena: &WeightArena) -> Self {
        if self.layout == RowLayout::Interleaved
            || !interleaved::can_interleave(self.ty)
            || !self.rows.is_multiple_of(ROWS_TOGETHER)
        {
            return self;
        }
        let (rows, row_bytes) = (self.rows, self.row_bytes());
        let data = arena.place(self.bytes().len(), |out| {
            interleaved::interleave_into(self.ty, self.bytes(), rows, row_bytes, out)
        });
        Self {
            layout: RowLayout::Interleaved,
            data,
            start: 0,
            ..self
        }
    }

    fn row_bytes(&self) -> usize {
        self.ty.row_bytes(self.cols).unwrap_or(0)
    }

    /// Y = X W^T for `n` rows of X ([n, cols]) into `y` ([n, rows]).
    pub fn matmul(&self, x: &[f32], n: usize, y: &mut [f32]) {
        let (ty, bytes, rows, cols) = (self.ty, self.bytes(), self.rows, self.cols);
        match self.layout {
            RowLayout::InFileOrder => {
                kernels::quant::matmul_rows_quant(ty, bytes, rows, cols, x, n, y)
            }
            RowLayout::Interleaved => {
                interleaved::matmul_interleaved(ty, bytes, rows, cols, x, n, y)
            }
        }
    }

    /// This matrix times input number `input` of a `matvec_many_quant` pass.
    pub fn job(&self, input: usize) -> MatVecJob<'_> {
        MatVecJob {
            ty: self.ty,
            layout: self.layout,
            weights: self.bytes(),
            rows: self.rows,
            input,
        }
    }

    /// The blocks as `layout` lays them out.
    pub fn bytes(&self) -> &[u8] {
        let len = self.rows * self.row_bytes();
        &(*self.data).as_ref()[self.start..self.start + len]
    }

    /// The blocks row after row, as the file holds them (an interleaved matrix is regrouped
    /// into a copy).
    pub fn in_file_order(&self) -> std::borrow::Cow<'_, [u8]> {
        match self.layout {
            RowLayout::InFileOrder => std::borrow::Cow::Borrowed(self.bytes()),
            RowLayout::Interleaved => std::borrow::Cow::Owned(interleaved::deinterleave(
                self.ty,
                self.bytes(),
                self.rows,
                self.row_bytes(),
            )),
        }
    }

    /// Rows `first..first + count` as a matrix of their own (an expert of a stacked tensor); of
    /// an interleaved matrix, only whole groups.
    pub fn rows(&self, name: &str, first: usize, count: usize) -> Result<Self> {
        if first + count > self.rows {
            return Err(EngineError::InvalidInput(format!(
                "tensor {name}: rows {first}..{} of {}",
                first + count,
                self.rows
            )));
        }
        let whole_groups =
            first.is_multiple_of(ROWS_TOGETHER) && count.is_multiple_of(ROWS_TOGETHER);
        if self.layout == RowLayout::Interleaved && !whole_groups {
            return Err(EngineError::InvalidInput(format!(
                "tensor {name}: rows {first}..{} cut its groups of {ROWS_TOGETHER} interleaved rows",
                first + count
            )));
        }
        // A group of eight interleaved rows takes the bytes of eight rows.
        Ok(Self {
            layout: self.layout,
            ..Self::new(
                name,
                self.ty,
                count,
                self.cols,
                self.data.clone(),
                self.start + first * self.row_bytes(),
            )?
        })
    }

    /// Every value as f32, row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        match self.layout {
            RowLayout::InFileOrder => kernels::quant::dequantize(self.ty, self.bytes(), &mut out),
            RowLayout::Interleaved => {
                let (rows, row_bytes) = (self.rows, self.row_bytes());
                let in_order = interleaved::deinterleave(self.ty, self.bytes(), rows, row_bytes);
                kernels::quant::dequantize(self.ty, &in_order, &mut out)
            }
        }
        out
    }
}

impl std::fmt::Debug for QuantizedWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} [{}, {}]", self.ty.name(), self.rows, self.cols)?;
        if self.layout == RowLayout::Interleaved {
            write!(f, " interleaved")?;
        }
        Ok(())
    }
}
