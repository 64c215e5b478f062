//! The token embedding: a table of `vocab` rows looked up a row per token.
//!
//! From a GGUF file on the CPU the table stays in the file's format and a lookup converts only
//! the rows it needs: expanded to f32 at load, DeepSeek-V2-Lite's 102,400 x 2,048 table would be
//! 839 MB of memory and most of the load time, for the few rows a prompt touches.

use candle_core::{DType, Device, Tensor};

use crate::error::{EngineError, Result};
use crate::quantized::QuantizedWeight;

pub(crate) enum Embedding {
    /// [vocab, hidden] in the compute dtype, on the model's device.
    Dense(Tensor),
    /// [vocab, hidden] as stored, rows converted on lookup (CPU only).
    Stored(QuantizedWeight),
}

impl Embedding {
    /// The rows of `ids`, [ids.len(), hidden] in `dtype`. An id past the table is an error.
    pub(crate) fn lookup(&self, ids: &[u32], dtype: DType, device: &Device) -> Result<Tensor> {
        match self {
            Self::Dense(table) => {
                let ids = Tensor::from_slice(ids, ids.len(), device)?;
                Ok(table.index_select(&ids, 0)?)
            }
            Self::Stored(table) => {
                let (rows, hidden) = (table.rows, table.cols);
                let row_bytes = table.ty.row_bytes(hidden).unwrap_or(0);
                let bytes = table.bytes();
                let mut values = vec![0f32; ids.len() * hidden];
                for (&id, out) in ids.iter().zip(values.chunks_exact_mut(hidden)) {
                    let id = id as usize;
                    if id >= rows {
                        return Err(EngineError::InvalidInput(format!(
                            "token id {id} is outside the vocabulary of {rows} tokens"
                        )));
                    }
                    kernels::quant::dequantize(
                        table.ty,
                        &bytes[id * row_bytes..(id + 1) * row_bytes],
                        out,
                    );
                }
                Ok(Tensor::from_vec(values, (ids.len(), hidden), device)?.to_dtype(dtype)?)
            }
        }
    }

    /// Bytes held in memory.
    pub(crate) fn bytes(&self) -> usize {
        match self {
            Self::Dense(table) => table.elem_count() * table.dtype().size_in_bytes(),
            Self::Stored(table) => table.bytes().len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kernels::quant::{GgmlType, quantize_q8_0};
    use std::sync::Arc;

    #[test]
    fn stored_rows_are_looked_up_as_the_dense_table_would_give_them() {
        let (vocab, hidden) = (5, 64);
        let values: Vec<f32> = (0..vocab * hidden)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let bytes: Arc<Vec<u8>> = Arc::new(quantize_q8_0(&values));
        let stored = Embedding::Stored(
            QuantizedWeight::new("table", GgmlType::Q8_0, vocab, hidden, bytes.clone(), 0).unwrap(),
        );
        let mut dequantized = vec![0f32; vocab * hidden];
        kernels::quant::dequantize(GgmlType::Q8_0, &bytes, &mut dequantized);
        let dense =
            Embedding::Dense(Tensor::from_vec(dequantized, (vocab, hidden), &Device::Cpu).unwrap());
        let ids = [4, 0, 4, 2];
        let a = stored.lookup(&ids, DType::F32, &Device::Cpu).unwrap();
        let b = dense.lookup(&ids, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(a.dims(), &[4, hidden]);
        assert_eq!(
            a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        assert_eq!(stored.bytes(), vocab * hidden / 32 * 34);
        let error = stored.lookup(&[5], DType::F32, &Device::Cpu).unwrap_err();
        assert!(error.to_string().contains("token id 5"), "{error}");
    }
}
