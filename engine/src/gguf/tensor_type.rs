//! Every tensor type ggml has numbered, with its block size, so a file's tensors can be
//! bounds-checked and an unreadable type named ("IQ2_XXS") even when the engine cannot decode it.

use kernels::quant::GgmlType;

/// A tensor type found in a GGUF file: one of ggml's, readable by this engine or not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorType {
    id: u32,
    name: &'static str,
    block_len: usize,
    block_bytes: usize,
}

/// (id, name, values per block, bytes per block), as gguf-py's GGML_QUANT_SIZES lists them.
/// Ids 4 and 5 (Q4_2, Q4_3) were removed from ggml and never appear in GGUF files.
const GGML_TYPES: &[(u32, &str, usize, usize)] = &[
    (0, "F32", 1, 4),
    (1, "F16", 1, 2),
    (2, "Q4_0", 32, 18),
    (3, "Q4_1", 32, 20),
    (6, "Q5_0", 32, 22),
    (7, "Q5_1", 32, 24),
    (8, "Q8_0", 32, 34),
    (9, "Q8_1", 32, 36),
    (10, "Q2_K", 256, 84),
    (11, "Q3_K", 256, 110),
    (12, "Q4_K", 256, 144),
    (13, "Q5_K", 256, 176),
    (14, "Q6_K", 256, 210),
    (15, "Q8_K", 256, 292),
    (16, "IQ2_XXS", 256, 66),
    (17, "IQ2_XS", 256, 74),
    (18, "IQ3_XXS", 256, 98),
    (19, "IQ1_S", 256, 50),
    (20, "IQ4_NL", 32, 18),
    (21, "IQ3_S", 256, 110),
    (22, "IQ2_S", 256, 82),
    (23, "IQ4_XS", 256, 136),
    (24, "I8", 1, 1),
    (25, "I16", 1, 2),
    (26, "I32", 1, 4),
    (27, "I64", 1, 8),
    (28, "F64", 1, 8),
    (29, "IQ1_M", 256, 56),
    (30, "BF16", 1, 2),
    (34, "TQ1_0", 256, 54),
    (35, "TQ2_0", 256, 66),
    (39, "MXFP4", 32, 17),
    (40, "NVFP4", 64, 36),
    (41, "Q1_0", 128, 18),
    (42, "Q2_0", 64, 18),
];

impl TensorType {
    /// The type numbered `id`, or `None` when no ggml type has that number.
    pub fn from_id(id: u32) -> Option<Self> {
        GGML_TYPES
            .iter()
            .find(|t| t.0 == id)
            .map(|&(id, name, block_len, block_bytes)| Self {
                id,
                name,
                block_len,
                block_bytes,
            })
    }

    pub fn id(self) -> u32 {
        self.id
    }

    /// The name llama.cpp prints ("Q8_0", "IQ2_XXS").
    pub fn name(self) -> &'static str {
        self.name
    }

    pub fn block_len(self) -> usize {
        self.block_len
    }

    /// Bytes of `values` values, or `None` when they are not whole blocks or the count overflows.
    pub fn bytes_for(self, values: u64) -> Option<u64> {
        let block_len = self.block_len as u64;
        if !values.is_multiple_of(block_len) {
            return None;
        }
        (values / block_len).checked_mul(self.block_bytes as u64)
    }

    /// The type as the kernels know it, when the engine can decode it.
    pub fn readable(self) -> Option<GgmlType> {
        GgmlType::from_id(self.id)
    }
}

/// The names of the types the engine decodes, for error messages.
pub fn readable_type_names() -> String {
    GgmlType::ALL
        .iter()
        .map(|t| t.name())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_agree_with_the_kernels_for_every_readable_type() {
        for t in GgmlType::ALL {
            let ours = TensorType::from_id(t.id()).unwrap();
            assert_eq!(ours.name(), t.name());
            assert_eq!(ours.block_len(), t.block_len());
            assert_eq!(
                ours.bytes_for(t.block_len() as u64 * 3),
                Some(3 * t.block_bytes() as u64)
            );
            assert_eq!(ours.readable(), Some(t));
        }
    }

    #[test]
    fn unreadable_types_still_have_names_and_sizes() {
        let iq2 = TensorType::from_id(16).unwrap();
        assert_eq!(iq2.name(), "IQ2_XXS");
        assert_eq!(iq2.readable(), None);
        assert_eq!(iq2.bytes_for(512), Some(132));
        assert_eq!(iq2.bytes_for(100), None, "not whole blocks");
        assert_eq!(TensorType::from_id(4), None, "removed from ggml");
        assert_eq!(TensorType::from_id(9999), None);
    }
}
