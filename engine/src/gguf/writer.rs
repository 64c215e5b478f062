//! Writing GGUF files (version 3, little-endian): metadata, tensor infos, alignment and data.
//!
//! The header is written first, from the tensors' names, shapes and types alone; the data then
//! streams in, tensor after tensor and in pieces of any size, so a file of many gigabytes never
//! has to be held in memory. The layout is the one [`super::GgufFile`] reads (see file.rs).

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;

use kernels::quant::GgmlType;

use super::metadata::MetadataValue;
use super::tensor_type::TensorType;

const MAGIC: &[u8; 4] = b"GGUF";
pub const GGUF_VERSION: u32 = 3;
/// What readers assume when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
const ALIGNMENT_KEY: &str = "general.alignment";

/// One tensor as the header describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    /// ggml's order: the row length first (the reverse of a row-major shape).
    pub dims: Vec<u64>,
    pub ty: TensorType,
}

impl TensorSpec {
    /// A tensor of the row-major `shape` ([rows, columns] for a matrix) stored as `ty`.
    pub fn new(name: impl Into<String>, shape: &[usize], ty: GgmlType) -> Self {
        Self {
            name: name.into(),
            dims: shape.iter().rev().map(|&d| d as u64).collect(),
            ty: TensorType::from_id(ty.id()).expect("every readable type is a ggml type"),
        }
    }

    /// Bytes of the tensor's data, or `None` when its rows are not whole blocks or the size
    /// overflows.
    pub fn byte_len(&self) -> Option<u64> {
        let (&row, rest) = self.dims.split_first()?;
        rest.iter()
            .try_fold(self.ty.bytes_for(row)?, |total, &d| total.checked_mul(d))
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

/// A GGUF string: u64 byte length, then the UTF-8 bytes.
pub fn write_string(out: &mut impl Write, s: &str) -> io::Result<()> {
    out.write_all(&(s.len() as u64).to_le_bytes())?;
    out.write_all(s.as_bytes())
}

/// GGUF's number for the type of `value`.
pub fn value_type_id(value: &MetadataValue) -> u32 {
    match value {
        MetadataValue::U8(_) => 0,
        MetadataValue::I8(_) => 1,
        MetadataValue::U16(_) => 2,
        MetadataValue::I16(_) => 3,
        MetadataValue::U32(_) => 4,
        MetadataValue::I32(_) => 5,
        MetadataValue::F32(_) => 6,
        MetadataValue::Bool(_) => 7,
        MetadataValue::String(_) => 8,
        MetadataValue::Array(_) => 9,
        MetadataValue::U64(_) => 10,
        MetadataValue::I64(_) => 11,
        MetadataValue::F64(_) => 12,
    }
}

/// A value without its type id (an array's elements share the one before its count).
fn write_value(out: &mut impl Write, key: &str, value: &MetadataValue) -> io::Result<()> {
    match value {
        MetadataValue::U8(v) => out.write_all(&[*v]),
        MetadataValue::I8(v) => out.write_all(&v.to_le_bytes()),
        MetadataValue::U16(v) => out.write_all(&v.to_le_bytes()),
        MetadataValue::I16(v) => out.write_all(&v.to_le_bytes()),
        MetadataValue::U32(v) => out.write_all(&v.to_le_bytes()),
        MetadataValue::I32(v) => out.write_all(&v.to_le_bytes()),
        MetadataValue::U64(v) => out.write_all(&v.to_le_bytes()),
        MetadataValue::I64(v) => out.write_all(&v.to_le_bytes()),
        MetadataValue::F32(v) => out.write_all(&v.to_le_bytes()),
        MetadataValue::F64(v) => out.write_all(&v.to_le_bytes()),
        MetadataValue::Bool(v) => out.write_all(&[u8::from(*v)]),
        MetadataValue::String(s) => write_string(out, s),
        MetadataValue::Array(items) => {
            // The element type is stored once, so it must be known and shared.
            let Some(first) = items.first() else {
                return Err(invalid(format!(
                    "metadata `{key}` is an empty array, whose element type GGUF cannot state"
                )));
            };
            let element_type = value_type_id(first);
            if let Some(other) = items.iter().find(|v| value_type_id(v) != element_type) {
                return Err(invalid(format!(
                    "metadata `{key}` mixes {} and {} elements; GGUF arrays hold one type",
                    first.type_name(),
                    other.type_name()
                )));
            }
            out.write_all(&element_type.to_le_bytes())?;
            out.write_all(&(items.len() as u64).to_le_bytes())?;
            items
                .iter()
                .try_for_each(|item| write_value(out, key, item))
        }
    }
}

/// One metadata entry: key, value type, value.
pub fn write_metadata_entry(
    out: &mut impl Write,
    key: &str,
    value: &MetadataValue,
) -> io::Result<()> {
    write_string(out, key)?;
    out.write_all(&value_type_id(value).to_le_bytes())?;
    write_value(out, key, value)
}

/// One tensor info: name, dimension count, dims (ggml order), type id, data offset.
pub fn write_tensor_info(
    out: &mut impl Write,
    name: &str,
    dims: &[u64],
    type_id: u32,
    offset: u64,
) -> io::Result<()> {
    write_string(out, name)?;
    out.write_all(&(dims.len() as u32).to_le_bytes())?;
    for d in dims {
        out.write_all(&d.to_le_bytes())?;
    }
    out.write_all(&type_id.to_le_bytes())?;
    out.write_all(&offset.to_le_bytes())
}

/// The alignment `metadata` asks for, or the default.
fn alignment(metadata: &[(String, MetadataValue)]) -> io::Result<u64> {
    match metadata.iter().find(|(key, _)| key == ALIGNMENT_KEY) {
        None => Ok(DEFAULT_ALIGNMENT),
        Some((_, value)) => match value.as_u64() {
            Some(a) if a.is_power_of_two() => Ok(a),
            _ => Err(invalid(format!(
                "`{ALIGNMENT_KEY}` must be a power of two, found {value:?}"
            ))),
        },
    }
}

/// Zeros up to the next multiple of `alignment` after `position` bytes.
fn pad(out: &mut impl Write, position: u64, alignment: u64) -> io::Result<u64> {
    let padding = position.next_multiple_of(alignment) - position;
    io::copy(&mut io::repeat(0).take(padding), out)?;
    Ok(position + padding)
}

/// A GGUF file being written: the header is out, the tensors' data goes in order.
pub struct GgufWriter<W: Write> {
    out: W,
    /// Each tensor's name and data length, in file order.
    tensors: Vec<(String, u64)>,
    alignment: u64,
    /// The tensor whose data comes next.
    current: usize,
    /// Bytes of the current tensor already written.
    written: u64,
}

impl GgufWriter<BufWriter<File>> {
    /// Creates (or truncates) `path` and writes the header.
    pub fn create(
        path: &Path,
        metadata: &[(String, MetadataValue)],
        tensors: &[TensorSpec],
    ) -> io::Result<Self> {
        let file = File::create(path)?;
        Self::new(BufWriter::with_capacity(1 << 20, file), metadata, tensors)
    }
}

impl<W: Write> GgufWriter<W> {
    /// Writes the header (metadata, tensor infos, padding) for tensors whose data will follow
    /// in this order.
    pub fn new(
        mut out: W,
        metadata: &[(String, MetadataValue)],
        tensors: &[TensorSpec],
    ) -> io::Result<Self> {
        let alignment = alignment(metadata)?;
        for (i, (key, _)) in metadata.iter().enumerate() {
            if metadata[..i].iter().any(|(k, _)| k == key) {
                return Err(invalid(format!("metadata key `{key}` appears twice")));
            }
        }
        let mut header = Counting::new(&mut out);
        header.write_all(MAGIC)?;
        header.write_all(&GGUF_VERSION.to_le_bytes())?;
        header.write_all(&(tensors.len() as u64).to_le_bytes())?;
        header.write_all(&(metadata.len() as u64).to_le_bytes())?;
        for (key, value) in metadata {
            write_metadata_entry(&mut header, key, value)?;
        }
        let mut offset = 0u64;
        let mut layout = Vec::with_capacity(tensors.len());
        for (i, tensor) in tensors.iter().enumerate() {
            if tensors[..i].iter().any(|t| t.name == tensor.name) {
                return Err(invalid(format!("tensor `{}` appears twice", tensor.name)));
            }
            let len = tensor
                .byte_len()
                .filter(|_| !tensor.dims.is_empty() && !tensor.dims.contains(&0))
                .ok_or_else(|| {
                    invalid(format!(
                        "tensor `{}` ({} {:?}) does not hold whole {} blocks of {} values",
                        tensor.name,
                        tensor.ty.name(),
                        tensor.dims,
                        tensor.ty.name(),
                        tensor.ty.block_len()
                    ))
                })?;
            write_tensor_info(
                &mut header,
                &tensor.name,
                &tensor.dims,
                tensor.ty.id(),
                offset,
            )?;
            layout.push((tensor.name.clone(), len));
            offset = (offset + len).next_multiple_of(alignment);
        }
        let position = header.count;
        pad(&mut out, position, alignment)?;
        Ok(Self {
            out,
            tensors: layout,
            alignment,
            current: 0,
            written: 0,
        })
    }

    /// The name of the tensor whose data comes next, `None` once all are written.
    pub fn next_tensor(&self) -> Option<&str> {
        self.tensors
            .get(self.current)
            .map(|(name, _)| name.as_str())
    }

    /// Appends `bytes` to the current tensor's data; a tensor is complete once it has its whole
    /// length, and the next one starts after the alignment padding. `bytes` must not run past
    /// the end of the current tensor.
    pub fn write_tensor_data(&mut self, bytes: &[u8]) -> io::Result<()> {
        let Some((name, len)) = self.tensors.get(self.current) else {
            return Err(invalid(format!(
                "{} bytes of data after the last tensor",
                bytes.len()
            )));
        };
        let left = len - self.written;
        if bytes.len() as u64 > left {
            return Err(invalid(format!(
                "{} bytes for tensor `{name}`, which has only {left} of its {len} bytes left",
                bytes.len()
            )));
        }
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        if self.written == *len {
            pad(&mut self.out, self.written, self.alignment)?;
            self.current += 1;
            self.written = 0;
        }
        Ok(())
    }

    /// Checks every tensor got all its data, flushes, and gives the output back.
    pub fn finish(mut self) -> io::Result<W> {
        if let Some(name) = self.next_tensor() {
            return Err(invalid(format!(
                "tensor `{name}` and {} after it have no data (or not all of it)",
                self.tensors.len() - self.current - 1
            )));
        }
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Counts the bytes of the header, which decides where the data starts.
struct Counting<W> {
    inner: W,
    count: u64,
}

impl<W> Counting<W> {
    fn new(inner: W) -> Self {
        Self { inner, count: 0 }
    }
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.count += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
