//! A GGUF file as a [`WeightSource`]: the model asks for Hugging Face names and gets the values
//! llama.cpp stored, dequantized to f32 (F16 and BF16 stay as stored, like safetensors).
//!
//! The stored bytes are also reachable as they are ([`GgufWeights::raw`]), one expert of a
//! stacked tensor included, so the engine can keep quantized weights in place of f32 copies.

use std::ops::Range;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use kernels::quant::GgmlType;

use super::file::{GgufFile, TensorInfo};
use super::names::{ExpertRows, Stored, locate};
use super::tensor_type::readable_type_names;
use crate::error::{EngineError, Result};
use crate::quantized::{QuantizedWeight, SharedBytes};
use crate::weights::{AbsorbedHalves, WeightSource};

/// The weights of one GGUF file.
pub struct GgufWeights {
    /// Shared, so that weights kept in place can keep the mapping alive after loading.
    file: Arc<GgufFile>,
}

/// A weight's stored bytes, used in place.
#[derive(Debug, Clone)]
pub struct RawTensor<'a> {
    pub ty: GgmlType,
    /// Row-major, slowest dimension first (as Hugging Face writes shapes; the reverse of GGUF's
    /// dims): [rows, columns] for a matrix.
    pub shape: Vec<usize>,
    /// Each row of `shape`'s last dimension takes `ty.row_bytes(columns)` bytes.
    pub bytes: &'a [u8],
    /// Where `bytes` are in [`GgufFile::mapped`], for holding on to them through
    /// [`GgufWeights::shared_file`] instead of a borrow.
    pub file_range: Range<usize>,
}

/// Bytes of one stored piece with the shape they hold.
struct Piece<'a> {
    info: &'a TensorInfo,
    /// Where the bytes are in the mapped file.
    range: Range<usize>,
    bytes: &'a [u8],
    shape: Vec<usize>,
}

impl GgufWeights {
    pub fn new(file: GgufFile) -> Self {
        Self {
            file: Arc::new(file),
        }
    }

    pub fn file(&self) -> &GgufFile {
        &self.file
    }

    /// The mapped file, for weights that stay in it after the model is built.
    pub fn shared_file(&self) -> Arc<GgufFile> {
        self.file.clone()
    }

    fn raw_of<'a>(&'a self, piece: Piece<'a>) -> Result<RawTensor<'a>> {
        Ok(RawTensor {
            ty: self.readable(&piece)?,
            file_range: piece.range,
            bytes: piece.bytes,
            shape: piece.shape,
        })
    }

    /// The stored bytes of the Hugging Face weight `hf_name` (an expert's rows of a stacked
    /// tensor included). `None` when the weight is rebuilt from several tensors rather than
    /// stored in one piece: kv_b_proj of files that split it (use `attn_k_b` and `attn_v_b` with
    /// [`GgufWeights::raw_gguf`] instead).
    pub fn raw(&self, hf_name: &str) -> Result<Option<RawTensor<'_>>> {
        let piece = match self.stored(hf_name)? {
            Stored::SplitKvB { .. } => return Ok(None),
            stored => self.piece(hf_name, &stored)?,
        };
        self.raw_of(piece).map(Some)
    }

    /// The stored bytes of the GGUF tensor `gguf_name` ("blk.0.attn_k_b.weight").
    pub fn raw_gguf(&self, gguf_name: &str) -> Result<RawTensor<'_>> {
        let piece = self.piece(gguf_name, &Stored::Whole(gguf_name.to_string()))?;
        self.raw_of(piece)
    }

    fn stored(&self, hf_name: &str) -> Result<Stored> {
        locate(hf_name, &|name| self.file.tensor_info(name).is_some()).ok_or_else(|| {
            EngineError::MissingTensor {
                name: hf_name.to_string(),
                location: format!(
                    "{} (no deepseek2 GGUF tensor stands for it)",
                    self.file.path().display()
                ),
            }
        })
    }

    fn info(&self, hf_name: &str, gguf_name: &str) -> Result<&TensorInfo> {
        self.file
            .tensor_info(gguf_name)
            .ok_or_else(|| EngineError::MissingTensor {
                name: describe(hf_name, gguf_name),
                location: self.file.path().display().to_string(),
            })
    }

    fn piece(&self, hf_name: &str, stored: &Stored) -> Result<Piece<'_>> {
        match stored {
            Stored::Whole(name) => {
                let info = self.info(hf_name, name)?;
                Ok(Piece {
                    info,
                    range: info.file_range(),
                    bytes: self.file.tensor_bytes(info),
                    shape: info.shape(),
                })
            }
            Stored::Expert {
                tensor,
                expert,
                rows,
            } => self.expert_rows(hf_name, tensor, *expert, *rows),
            Stored::SplitKvB { .. } => Err(EngineError::Internal(format!(
                "{hf_name} is rebuilt from two tensors, not stored in one piece"
            ))),
        }
    }

    /// One expert's rows of a stacked [experts, rows, columns] tensor: contiguous bytes.
    fn expert_rows(
        &self,
        hf_name: &str,
        tensor: &str,
        expert: usize,
        part: ExpertRows,
    ) -> Result<Piece<'_>> {
        let info = self.info(hf_name, tensor)?;
        let bad = |problem: String| EngineError::BadGguf {
            path: self.file.path().to_path_buf(),
            message: format!("tensor `{tensor}` (for {hf_name}) {problem}"),
        };
        let &[experts, stacked_rows, columns] = info.shape().as_slice() else {
            return Err(bad(format!(
                "has shape {:?}, not [experts, rows, columns]",
                info.shape()
            )));
        };
        if expert >= experts {
            return Err(bad(format!("holds {experts} experts, not expert {expert}")));
        }
        let (first_row, rows) = match part {
            ExpertRows::All => (0, stacked_rows),
            _ if !stacked_rows.is_multiple_of(2) => {
                return Err(bad(format!(
                    "fuses gate and up but has an odd row count ({stacked_rows})"
                )));
            }
            ExpertRows::FusedGate => (0, stacked_rows / 2),
            ExpertRows::FusedUp => (stacked_rows / 2, stacked_rows / 2),
        };
        // Whole blocks per row were checked when the file was opened.
        let row_bytes =
            info.tensor_type()
                .bytes_for(columns as u64)
                .ok_or_else(|| bad("has rows of partial blocks".into()))? as usize;
        let start = info.file_range().start + (expert * stacked_rows + first_row) * row_bytes;
        let range = start..start + rows * row_bytes;
        Ok(Piece {
            info,
            bytes: &self.file.mapped()[range.clone()],
            range,
            shape: vec![rows, columns],
        })
    }

    fn readable(&self, piece: &Piece) -> Result<GgmlType> {
        piece
            .info
            .tensor_type()
            .readable()
            .ok_or_else(|| EngineError::TensorType {
                name: piece.info.name().to_string(),
                path: self.file.path().to_path_buf(),
                found: piece.info.tensor_type().name().to_string(),
                supported: readable_type_names(),
            })
    }

    fn check_shape(
        &self,
        hf_name: &str,
        gguf_name: &str,
        expected: &[usize],
        found: &[usize],
    ) -> Result<()> {
        if expected == found {
            return Ok(());
        }
        Err(EngineError::TensorShape {
            name: describe(hf_name, gguf_name),
            path: self.file.path().to_path_buf(),
            expected: expected.to_vec(),
            found: found.to_vec(),
        })
    }

    /// The values of `piece` as a CPU tensor: floats as stored, quantized blocks as f32.
    fn decode(&self, piece: &Piece) -> Result<Tensor> {
        let ty = self.readable(piece)?;
        let stored = match ty {
            GgmlType::F32 => Some(DType::F32),
            GgmlType::F16 => Some(DType::F16),
            GgmlType::BF16 => Some(DType::BF16),
            _ => None,
        };
        Ok(match stored {
            Some(dtype) => Tensor::from_raw_buffer(piece.bytes, dtype, &piece.shape, &Device::Cpu)?,
            None => Tensor::from_vec(
                dequantized(ty, piece.bytes),
                piece.shape.as_slice(),
                &Device::Cpu,
            )?,
        })
    }

    /// kv_b_proj [heads * (nope + v), kv_lora] from the converter's halves: per head, W_UK
    /// (`attn_k_b` holds it transposed, [heads, kv_lora, nope]) above W_UV (`attn_v_b`,
    /// [heads, v, kv_lora]).
    fn joined_kv_b(
        &self,
        hf_name: &str,
        k_b: &str,
        v_b: &str,
        expected: &[usize],
    ) -> Result<Tensor> {
        let k_piece = self.piece(hf_name, &Stored::Whole(k_b.to_string()))?;
        let v_piece = self.piece(hf_name, &Stored::Whole(v_b.to_string()))?;
        let (&[heads, kv_lora, nope], &[v_heads, v_dim, v_kv_lora]) =
            (k_piece.shape.as_slice(), v_piece.shape.as_slice())
        else {
            return Err(EngineError::BadGguf {
                path: self.file.path().to_path_buf(),
                message: format!(
                    "`{k_b}` {:?} and `{v_b}` {:?} are not [heads, kv_lora, nope] and \
                     [heads, v, kv_lora]",
                    k_piece.shape, v_piece.shape
                ),
            });
        };
        let joined_name = format!("{k_b} + {v_b}");
        self.check_shape(
            hf_name,
            &joined_name,
            &[heads, v_dim, kv_lora],
            &[v_heads, v_dim, v_kv_lora],
        )?;
        self.check_shape(
            hf_name,
            &joined_name,
            expected,
            &[heads * (nope + v_dim), kv_lora],
        )?;
        let k_values = dequantized(self.readable(&k_piece)?, k_piece.bytes);
        let v_values = dequantized(self.readable(&v_piece)?, v_piece.bytes);
        let mut out = Vec::with_capacity(heads * (nope + v_dim) * kv_lora);
        for h in 0..heads {
            let k_head = &k_values[h * kv_lora * nope..][..kv_lora * nope];
            for n in 0..nope {
                out.extend((0..kv_lora).map(|l| k_head[l * nope + n]));
            }
            out.extend_from_slice(&v_values[h * v_dim * kv_lora..][..v_dim * kv_lora]);
        }
        Ok(Tensor::from_vec(out, expected, &Device::Cpu)?)
    }
}

/// "hf (GGUF `gguf`)": both names, so the user can find the tensor in either world.
fn describe(hf_name: &str, gguf_name: &str) -> String {
    if hf_name == gguf_name {
        hf_name.to_string()
    } else {
        format!("{hf_name} (GGUF `{gguf_name}`)")
    }
}

/// Every value of whole blocks of `ty` as f32, exactly as ggml dequantizes them.
fn dequantized(ty: GgmlType, bytes: &[u8]) -> Vec<f32> {
    let values = bytes.len() / ty.block_bytes() * ty.block_len();
    let mut out = vec![0f32; values];
    kernels::quant::dequantize(ty, bytes, &mut out);
    out
}

impl WeightSource for GgufWeights {
    fn done_with(&self, bytes: &[u8]) {
        self.file.release(bytes);
    }

    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        match self.stored(name)? {
            Stored::SplitKvB { k_b, v_b } => self.joined_kv_b(name, &k_b, &v_b, shape),
            stored => {
                let piece = self.piece(name, &stored)?;
                self.check_shape(name, piece.info.name(), shape, &piece.shape)?;
                self.decode(&piece)
            }
        }
    }

    /// A 2-D weight stored in a block format is handed out as its bytes in the mapped file (the
    /// mapping stays alive as long as the weight does); kv_b of files that split it is not.
    fn quantized(&self, name: &str, shape: &[usize]) -> Result<Option<QuantizedWeight>> {
        let Some(raw) = self.raw(name)? else {
            return Ok(None);
        };
        if raw.shape != shape || shape.len() != 2 {
            // `tensor` reports the mismatch with the full story.
            return Ok(None);
        }
        let file: SharedBytes = self.file.clone();
        QuantizedWeight::new(name, raw.ty, shape[0], shape[1], file, raw.file_range.start).map(Some)
    }

    /// The converter's `attn_k_b` ([heads, kv_lora, nope]) is W_UK^T per head and `attn_v_b`
    /// ([heads, v, kv_lora]) W_UV per head: the absorbed form's own layout, so a decoded token
    /// multiplies the file's blocks as they are (no copy, no second rounding), as llama.cpp
    /// does. Float halves, or rows that are not whole blocks, are rebuilt from kv_b instead.
    fn absorbed_halves(&self, name: &str) -> Result<Option<AbsorbedHalves>> {
        let Stored::SplitKvB { k_b, v_b } = self.stored(name)? else {
            return Ok(None);
        };
        let (k, v) = (self.raw_gguf(&k_b)?, self.raw_gguf(&v_b)?);
        let (&[heads, kv_lora, nope], &[v_heads, v_dim, v_kv_lora]) =
            (k.shape.as_slice(), v.shape.as_slice())
        else {
            // `tensor` (kv_b rebuilt) reports the shapes with the whole story.
            return Ok(None);
        };
        let block_rows = |ty: GgmlType, cols: usize| {
            ty.block_len() > 1 && ty.row_bytes(cols).is_some_and(|bytes| bytes > 0)
        };
        if (v_heads, v_kv_lora) != (heads, kv_lora)
            || !block_rows(k.ty, nope)
            || !block_rows(v.ty, kv_lora)
        {
            return Ok(None);
        }
        let file: SharedBytes = self.file.clone();
        let half = |name: &str, raw: &RawTensor, rows: usize, cols: usize| {
            QuantizedWeight::new(name, raw.ty, rows, cols, file.clone(), raw.file_range.start)
        };
        Ok(Some(AbsorbedHalves {
            uk_t: half(&k_b, &k, heads * kv_lora, nope)?,
            uv: half(&v_b, &v, heads * v_dim, kv_lora)?,
        }))
    }

    fn contains(&self, name: &str) -> bool {
        let exists = |gguf: &str| self.file.tensor_info(gguf).is_some();
        match locate(name, &exists) {
            Some(Stored::SplitKvB { k_b, v_b }) => exists(&k_b) && exists(&v_b),
            Some(stored) => self.piece(name, &stored).is_ok(),
            None => false,
        }
    }
}
