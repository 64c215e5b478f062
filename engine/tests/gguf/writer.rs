//! A minimal GGUF writer for the broken-file tests: just enough of the format to say exactly
//! which bytes a case gets wrong.

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

const ALIGNMENT: usize = 32;

fn string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

impl Gguf {
    pub fn new(metadata: Vec<(&'static str, Value)>, tensors: Vec<Tensor>) -> Self {
        Self {
            version: 3,
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
            string(&mut out, key);
            match value {
                Value::U32(v) => {
                    out.extend_from_slice(&4u32.to_le_bytes());
                    out.extend_from_slice(&v.to_le_bytes());
                }
                Value::Str(s) => {
                    out.extend_from_slice(&8u32.to_le_bytes());
                    string(&mut out, s);
                }
                Value::HollowArray { count } => {
                    out.extend_from_slice(&9u32.to_le_bytes());
                    out.extend_from_slice(&4u32.to_le_bytes());
                    out.extend_from_slice(&count.to_le_bytes());
                }
            }
        }
        let mut data = Vec::new();
        for tensor in &self.tensors {
            string(&mut out, tensor.name);
            out.extend_from_slice(&(tensor.dims.len() as u32).to_le_bytes());
            for d in &tensor.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&tensor.type_id.to_le_bytes());
            let offset = tensor.offset.unwrap_or(data.len() as u64);
            out.extend_from_slice(&offset.to_le_bytes());
            data.extend_from_slice(&tensor.data);
            data.resize(data.len().next_multiple_of(ALIGNMENT), 0);
        }
        out.resize(out.len().next_multiple_of(ALIGNMENT), 0);
        out.extend_from_slice(&data);
        out
    }
}
