//! Broken GGUF files for the error tests: the product's encoders (engine::gguf::writer) for
//! every well-formed piece, and knobs for the pieces a case gets wrong on purpose (a tensor count
//! that lies, an array with no elements behind its count, offsets and data that do not match the
//! tensor infos) that the product writer refuses to write.

use engine::gguf::MetadataValue;
use engine::gguf::writer::{
    DEFAULT_ALIGNMENT, GGUF_VERSION, write_metadata_entry, write_string, write_tensor_info,
};

/// A metadata value (the few types the cases need).
pub enum Value {
    U32(u32),
    Str(&'static str),
    /// An array header claiming `count` u32 elements, followed by none of them.
    HollowArray {
        count: u64,
    },
}

pub struct Tensor {
    pub name: &'static str,
    /// ggml order: row length first.
    pub dims: Vec<u64>,
    pub type_id: u32,
    /// Offset into the data section; `None` places it after the previous tensor.
    pub offset: Option<u64>,
    pub data: Vec<u8>,
}

pub struct Gguf {
    pub version: u32,
    /// `None`: the real count.
    pub tensor_count: Option<u64>,
    pub metadata: Vec<(&'static str, Value)>,
    pub tensors: Vec<Tensor>,
}

const ALIGNMENT: usize = DEFAULT_ALIGNMENT as usize;
/// GGUF's type id for arrays and for u32.
const ARRAY: u32 = 9;
const U32: u32 = 4;

impl Gguf {
    pub fn new(metadata: Vec<(&'static str, Value)>, tensors: Vec<Tensor>) -> Self {
        Self {
            version: GGUF_VERSION,
            tensor_count: None,
            metadata,
            tensors,
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend_from_slice(&self.version.to_le_bytes());
        let tensor_count = self.tensor_count.unwrap_or(self.tensors.len() as u64);
        out.extend_from_slice(&tensor_count.to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            let written = match value {
                Value::U32(v) => write_metadata_entry(&mut out, key, &MetadataValue::U32(*v)),
                Value::Str(s) => {
                    write_metadata_entry(&mut out, key, &MetadataValue::String(s.to_string()))
                }
                Value::HollowArray { count } => write_string(&mut out, key).map(|()| {
                    out.extend_from_slice(&ARRAY.to_le_bytes());
                    out.extend_from_slice(&U32.to_le_bytes());
                    out.extend_from_slice(&count.to_le_bytes());
                }),
            };
            written.expect("writing to a Vec cannot fail");
        }
        let mut data = Vec::new();
        for tensor in &self.tensors {
            let offset = tensor.offset.unwrap_or(data.len() as u64);
            write_tensor_info(&mut out, tensor.name, &tensor.dims, tensor.type_id, offset)
                .expect("writing to a Vec cannot fail");
            data.extend_from_slice(&tensor.data);
            data.resize(data.len().next_multiple_of(ALIGNMENT), 0);
        }
        out.resize(out.len().next_multiple_of(ALIGNMENT), 0);
        out.extend_from_slice(&data);
        out
    }
}
