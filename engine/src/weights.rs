//! Where tensors come from: safetensors files (memory-mapped, one file or sharded) or a seeded
//! random generator for synthetic models of real dimensions (benchmarks, tests).
//!
//! A source hands out host tensors in their stored dtype; the model converts them to its compute
//! dtype and device. Every failure names the tensor and the file.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use memmap2::Mmap;
use rayon::prelude::*;
use safetensors::tensor::{Dtype, Metadata, SafeTensors};

use crate::error::{EngineError, Result};
use crate::quantized::QuantizedWeight;

/// Anything that can produce named weight tensors of an expected shape.
pub trait WeightSource: Send + Sync {
    /// The tensor `name`, which must have exactly `shape`, on the CPU in its stored dtype.
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor>;
    /// Whether a tensor of this name exists (used for optional tensors such as biases).
    fn contains(&self, name: &str) -> bool;
    /// The 2-D tensor `name` ([rows, cols] = `shape`) as stored in a GGUF file's blocks, for a
    /// source that keeps them; `None` sends the caller to `tensor`.
    fn quantized(&self, _name: &str, _shape: &[usize]) -> Result<Option<QuantizedWeight>> {
        Ok(None)
    }
    /// `bytes`, which this source gave out, will not be read again (the model keeps its own
    /// rearranged copy): a mapped file may drop their pages from the process's memory.
    fn done_with(&self, _bytes: &[u8]) {}
    /// kv_b_proj `name` as the absorbed form's two halves, when the source stores them apart in
    /// a block format (as llama.cpp's converter writes `attn_k_b` and `attn_v_b`): W_UK^T
    /// [heads * kv_lora, nope] and W_UV [heads * v, kv_lora], each head's rows together.
    /// `None` sends the caller to rebuilding them from kv_b_proj.
    fn absorbed_halves(&self, _name: &str) -> Result<Option<AbsorbedHalves>> {
        Ok(None)
    }
}

/// MLA's absorbed weights as a file stores them: see [`WeightSource::absorbed_halves`].
pub struct AbsorbedHalves {
    /// W_UK^T: [heads * kv_lora, nope].
    pub uk_t: QuantizedWeight,
    /// W_UV: [heads * v, kv_lora].
    pub uv: QuantizedWeight,
}

/// The safetensors files of a Hugging Face model directory, memory-mapped.
pub struct SafetensorsWeights {
    files: Vec<MappedFile>,
    /// Tensor name -> index into `files`.
    owner: HashMap<String, usize>,
    dir: PathBuf,
}

struct MappedFile {
    path: PathBuf,
    mmap: Mmap,
    header_len: usize,
    metadata: Metadata,
}

const INDEX_FILE: &str = "model.safetensors.index.json";
const SINGLE_FILE: &str = "model.safetensors";

impl SafetensorsWeights {
    /// Opens `dir/model.safetensors`, or the shards listed in `dir/model.safetensors.index.json`,
    /// or else every `*.safetensors` file in `dir`.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let index_path = dir.join(INDEX_FILE);
        let paths = if index_path.is_file() {
            shard_paths(&index_path, dir)?
        } else if dir.join(SINGLE_FILE).is_file() {
            vec![dir.join(SINGLE_FILE)]
        } else {
            let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(|source| EngineError::Io {
                    path: dir.to_path_buf(),
                    source,
                })?
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
                .collect();
            found.sort();
            found
        };
        if paths.is_empty() {
            return Err(EngineError::NoWeights {
                dir: dir.to_path_buf(),
            });
        }
        Self::open_files(dir, &paths)
    }

    fn open_files(dir: &Path, paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::with_capacity(paths.len());
        let mut owner = HashMap::new();
        for path in paths {
            let mapped = MappedFile::open(path)?;
            for name in mapped.metadata.tensors().into_keys() {
                owner.insert(name, files.len());
            }
            files.push(mapped);
        }
        Ok(Self {
            files,
            owner,
            dir: dir.to_path_buf(),
        })
    }

    /// Total bytes of all mapped files.
    pub fn mapped_bytes(&self) -> usize {
        self.files.iter().map(|f| f.mmap.len()).sum()
    }
}

impl MappedFile {
    fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|source| EngineError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        // SAFETY: the map is read-only; a checkpoint rewritten while we run is outside our contract,
        // exactly as for every other safetensors reader.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|source| EngineError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let (header_len, metadata) =
            SafeTensors::read_metadata(&mmap).map_err(|e| EngineError::BadSafetensors {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            mmap,
            header_len,
            metadata,
        })
    }

    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let info = self
            .metadata
            .info(name)
            .expect("owner map only points at files holding the tensor");
        if info.shape != shape {
            return Err(EngineError::TensorShape {
                name: name.to_string(),
                path: self.path.clone(),
                expected: shape.to_vec(),
                found: info.shape.clone(),
            });
        }
        let dtype = match info.dtype {
            Dtype::F32 => DType::F32,
            Dtype::F16 => DType::F16,
            Dtype::BF16 => DType::BF16,
            other => {
                return Err(EngineError::TensorDtype {
                    name: name.to_string(),
                    path: self.path.clone(),
                    dtype: format!("{other:?}"),
                });
            }
        };
        // read_metadata checked that every range lies inside the file.
        let start = 8 + self.header_len + info.data_offsets.0;
        let end = 8 + self.header_len + info.data_offsets.1;
        Ok(Tensor::from_raw_buffer(
            &self.mmap[start..end],
            dtype,
            shape,
            &Device::Cpu,
        )?)
    }
}

fn shard_paths(index_path: &Path, dir: &Path) -> Result<Vec<PathBuf>> {
    let bad = |message: String| EngineError::BadShardIndex {
        path: index_path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(index_path).map_err(|source| EngineError::Io {
        path: index_path.to_path_buf(),
        source,
    })?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let map = value
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("no `weight_map` object".into()))?;
    let mut names: Vec<&str> = Vec::new();
    for (tensor, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| bad(format!("`{tensor}` maps to {file}, not a file name")))?;
        if Path::new(file).components().count() != 1 {
            return Err(bad(format!(
                "`{file}` is not a file name inside the model directory"
            )));
        }
        if !names.contains(&file) {
            names.push(file);
        }
    }
    names.sort_unstable();
    names
        .into_iter()
        .map(|name| {
            let path = dir.join(name);
            if path.is_file() {
                Ok(path)
            } else {
                Err(bad(format!("it lists `{name}`, which does not exist")))
            }
        })
        .collect()
}

impl WeightSource for SafetensorsWeights {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        match self.owner.get(name) {
            Some(&i) => self.files[i].tensor(name, shape),
            None => Err(EngineError::MissingTensor {
                name: name.to_string(),
                location: format!("the safetensors files in {}", self.dir.display()),
            }),
        }
    }

    fn contains(&self, name: &str) -> bool {
        self.owner.contains_key(name)
    }
}

/// Deterministic pseudo-random weights: a model of real dimensions without a checkpoint.
///
/// Matrices are uniform with variance 1/fan_in (activations keep their scale through the
/// layers), embeddings have unit variance, norm weights sit near 1 and biases near 0.
pub struct RandomWeights {
    seed: u64,
}

impl RandomWeights {
    pub fn new(seed: u64) -> Self {
        Self { seed }
    }
}

impl WeightSource for RandomWeights {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let count: usize = shape.iter().product();
        let (center, half_width) = if name.ends_with("norm.weight") {
            (1.0, 0.1)
        } else if name.ends_with(".bias") {
            (0.0, 0.1)
        } else if name.contains("embed_tokens") {
            (0.0, 3f32.sqrt())
        } else {
            let fan_in = *shape.last().unwrap_or(&1) as f32;
            (0.0, (3.0 / fan_in).sqrt())
        };
        let stream = self.seed ^ fnv1a(name.as_bytes());
        let mut values = vec![0f32; count];
        // Fixed-size chunks, each with its own stream, so the result does not depend on thread count.
        const CHUNK: usize = 1 << 16;
        values
            .par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(chunk, out)| {
                let mut state =
                    splitmix64(stream ^ (chunk as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                for v in out {
                    state = splitmix64(state);
                    let unit = (state >> 40) as f32 / (1u64 << 24) as f32; // [0, 1)
                    *v = center + half_width * (2.0 * unit - 1.0);
                }
            });
        Ok(Tensor::from_vec(values, shape, &Device::Cpu)?)
    }

    fn contains(&self, name: &str) -> bool {
        // A synthetic model has every weight its config asks for, and no biases.
        !name.ends_with(".bias")
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
