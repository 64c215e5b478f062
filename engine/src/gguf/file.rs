//! The GGUF container (versions 2 and 3, little-endian), memory-mapped: header, metadata,
//! tensor infos and the bounds of every tensor's data, all checked when the file is opened so
//! that later reads cannot go wrong. Knows nothing of any model architecture.
//!
//! Layout: "GGUF", u32 version, u64 tensor count, u64 metadata count, the metadata entries
//! (string key, u32 value type, value), the tensor infos (string name, u32 dimension count, u64
//! dimensions fastest-varying first, u32 ggml type, u64 offset into the data), padding to
//! `general.alignment` (32 by default), then the tensor data.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::cursor::{Cursor, ParseResult};
use super::metadata::MetadataValue;
use super::tensor_type::TensorType;
use crate::error::{EngineError, Result};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's GGML_MAX_DIMS.
const MAX_DIMS: u32 = 4;
/// Arrays of arrays are legal; deeper nesting than this is corruption.
const MAX_ARRAY_DEPTH: usize = 4;

/// One tensor's description and where its bytes are.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    name: String,
    dims: Vec<u64>,
    ty: TensorType,
    start: usize,
    len: usize,
}

impl TensorInfo {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// ggml's order: `dims()[0]` is the length of a row (the fastest-varying index).
    pub fn dims(&self) -> &[u64] {
        &self.dims
    }

    /// Row-major order, slowest index first, as Hugging Face and candle write shapes: the
    /// reverse of [`TensorInfo::dims`].
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    pub fn tensor_type(&self) -> TensorType {
        self.ty
    }

    pub fn byte_len(&self) -> usize {
        self.len
    }

    /// Where the tensor's bytes are in the file.
    pub fn file_range(&self) -> std::ops::Range<usize> {
        self.start..self.start + self.len
    }
}

/// An open GGUF file.
pub struct GgufFile {
    path: PathBuf,
    mmap: Mmap,
    version: u32,
    metadata: HashMap<String, MetadataValue>,
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
}

impl GgufFile {
    /// Maps and checks `path`; every failure names the file and what is wrong with it.
    pub fn open(path: &Path) -> Result<Self> {
        let io_error = |source| EngineError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io_error)?;
        // SAFETY: the map is read-only; a file rewritten while we run is outside our contract,
        // exactly as for the safetensors reader.
        let mmap = unsafe { Mmap::map(&file) }.map_err(io_error)?;
        let parsed = parse(&mmap).map_err(|message| EngineError::BadGguf {
            path: path.to_path_buf(),
            message,
        })?;
        let by_name = parsed
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            mmap,
            version: parsed.version,
            metadata: parsed.metadata,
            tensors: parsed.tensors,
            by_name,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn metadata(&self, key: &str) -> Option<&MetadataValue> {
        self.metadata.get(key)
    }

    pub fn metadata_keys(&self) -> impl Iterator<Item = &str> {
        self.metadata.keys().map(String::as_str)
    }

    /// `general.architecture`, when it is a string.
    pub fn architecture(&self) -> Option<&str> {
        self.metadata("general.architecture")
            .and_then(MetadataValue::as_str)
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// The stored bytes of a tensor of this file (bounds were checked at open).
    pub fn tensor_bytes(&self, info: &TensorInfo) -> &[u8] {
        &self.mmap[info.start..info.start + info.len]
    }

    /// The whole mapped file.
    pub fn mapped(&self) -> &[u8] {
        &self.mmap
    }

    /// Drops the pages holding `bytes` (a range of [`Self::mapped`]; anything else is ignored)
    /// from this process's memory: the loader calls it for tensors it has copied, so a model
    /// does not count its weights twice. Nothing is lost: the map is read-only, and a later
    /// read (of these bytes, or of a neighbour's that shares their first or last page) faults
    /// the pages in again from the file.
    pub fn release(&self, bytes: &[u8]) {
        let base = self.mmap.as_ptr() as usize;
        let start = bytes.as_ptr() as usize;
        if start < base || start + bytes.len() > base + self.mmap.len() {
            return;
        }
        // SAFETY: `MADV_DONTNEED` on a read-only file mapping only unmaps the pages (memmap2
        // rounds the start down to one); the bytes stay the file's, and every slice of the map
        // reads them again. Only a hint: an error leaves the pages where they are.
        #[cfg(unix)]
        let _ = unsafe {
            self.mmap.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                start - base,
                bytes.len(),
            )
        };
    }
}

struct Parsed {
    version: u32,
    metadata: HashMap<String, MetadataValue>,
    tensors: Vec<TensorInfo>,
}

fn parse(bytes: &[u8]) -> ParseResult<Parsed> {
    let mut c = Cursor::new(bytes);
    let magic = c.take(4, &|| "the magic number".into())?;
    if magic != MAGIC {
        return Err(format!(
            "it starts with {magic:02x?} ({:?}), not the magic `GGUF`",
            String::from_utf8_lossy(magic)
        ));
    }
    let version = c.u32(&|| "the version".into())?;
    check_version(version)?;
    let tensor_count = c.u64(&|| "the tensor count".into())?;
    let metadata_count = c.u64(&|| "the metadata count".into())?;

    // Each entry is at least a key length, a value type and a one-byte value.
    let metadata_count = c.check_count(metadata_count, 8 + 4 + 1, &|| {
        "the header's metadata count".into()
    })?;
    let mut metadata = HashMap::with_capacity(metadata_count);
    for index in 0..metadata_count {
        let key = c.string(&|| format!("the key of metadata entry {index}"))?;
        let value_type = c.u32(&|| format!("the value type of metadata `{key}`"))?;
        let value = read_value(&mut c, value_type, &key, 0)?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(format!("metadata key `{key}` appears twice"));
        }
    }

    // Each info is at least a name length, a dimension count, a type and an offset.
    let tensor_count = c.check_count(tensor_count, 8 + 4 + 4 + 8, &|| {
        "the header's tensor count".into()
    })?;
    let mut infos = Vec::with_capacity(tensor_count);
    let mut seen = HashMap::with_capacity(tensor_count);
    for index in 0..tensor_count {
        let info = read_tensor_info(&mut c, index)?;
        if seen.insert(info.0.clone(), index).is_some() {
            return Err(format!("tensor `{}` appears twice", info.0));
        }
        infos.push(info);
    }

    let alignment = alignment(&metadata)?;
    let data_start = (c.position() as u64).next_multiple_of(alignment);
    let tensors = infos
        .into_iter()
        .map(|(name, dims, ty, offset)| {
            locate(name, dims, ty, offset, data_start, alignment, bytes.len())
        })
        .collect::<ParseResult<Vec<_>>>()?;
    Ok(Parsed {
        version,
        metadata,
        tensors,
    })
}

fn check_version(version: u32) -> ParseResult<()> {
    match version {
        2 | 3 => Ok(()),
        1 => Err(
            "GGUF version 1 is not supported (versions 2 and 3 are); convert the model again \
             with a current llama.cpp"
                .into(),
        ),
        // A big-endian file's version reads byte-swapped here.
        v if matches!(v.swap_bytes(), 2 | 3) => Err(format!(
            "it is a big-endian GGUF (version {}), which is not supported; use a little-endian \
             file",
            v.swap_bytes()
        )),
        v => Err(format!(
            "GGUF version {v} is not supported (versions 2 and 3 are)"
        )),
    }
}

/// Smallest encoded size of one array element of a value type, to bound an array's count.
fn min_value_bytes(value_type: u32) -> u64 {
    match value_type {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        9 => 12,
        _ => 1,
    }
}

fn read_value(
    c: &mut Cursor,
    value_type: u32,
    key: &str,
    depth: usize,
) -> ParseResult<MetadataValue> {
    let what = || format!("the value of metadata `{key}`");
    Ok(match value_type {
        0 => MetadataValue::U8(c.u8(&what)?),
        1 => MetadataValue::I8(c.u8(&what)? as i8),
        2 => MetadataValue::U16(c.u16(&what)?),
        3 => MetadataValue::I16(c.u16(&what)? as i16),
        4 => MetadataValue::U32(c.u32(&what)?),
        5 => MetadataValue::I32(c.u32(&what)? as i32),
        6 => MetadataValue::F32(c.f32(&what)?),
        7 => MetadataValue::Bool(c.u8(&what)? != 0),
        8 => MetadataValue::String(c.string(&what)?),
        9 => {
            if depth >= MAX_ARRAY_DEPTH {
                return Err(format!(
                    "metadata `{key}` nests arrays more than {MAX_ARRAY_DEPTH} deep"
                ));
            }
            let element_type = c.u32(&|| format!("the element type of array `{key}`"))?;
            let count = c.u64(&|| format!("the length of array `{key}`"))?;
            let count = c.check_count(count, min_value_bytes(element_type), &|| {
                format!("array `{key}`")
            })?;
            let mut items = Vec::with_capacity(count);
            for _ in 0..count {
                items.push(read_value(c, element_type, key, depth + 1)?);
            }
            MetadataValue::Array(items)
        }
        10 => MetadataValue::U64(c.u64(&what)?),
        11 => MetadataValue::I64(c.u64(&what)? as i64),
        12 => MetadataValue::F64(c.f64(&what)?),
        other => {
            return Err(format!(
                "metadata `{key}` has value type {other}, which GGUF does not define"
            ));
        }
    })
}

type RawInfo = (String, Vec<u64>, TensorType, u64);

fn read_tensor_info(c: &mut Cursor, index: usize) -> ParseResult<RawInfo> {
    let name = c.string(&|| format!("the name of tensor {index}"))?;
    let what = |field: &str| format!("the {field} of tensor `{name}`");
    let dim_count = c.u32(&|| what("dimension count"))?;
    if !(1..=MAX_DIMS).contains(&dim_count) {
        return Err(format!(
            "tensor `{name}` has {dim_count} dimensions; GGUF allows 1 to {MAX_DIMS}"
        ));
    }
    let dims = (0..dim_count)
        .map(|_| c.u64(&|| what("dimensions")))
        .collect::<ParseResult<Vec<_>>>()?;
    let type_id = c.u32(&|| what("type"))?;
    let ty = TensorType::from_id(type_id).ok_or_else(|| {
        format!("tensor `{name}` has type id {type_id}, which is no ggml tensor type")
    })?;
    let offset = c.u64(&|| what("data offset"))?;
    Ok((name, dims, ty, offset))
}

fn alignment(metadata: &HashMap<String, MetadataValue>) -> ParseResult<u64> {
    match metadata.get("general.alignment") {
        None => Ok(DEFAULT_ALIGNMENT),
        Some(value) => match value.as_u64() {
            Some(a) if a.is_power_of_two() => Ok(a),
            _ => Err(format!(
                "`general.alignment` must be a power of two, found {value:?}"
            )),
        },
    }
}

/// Checks a tensor's size and place against the file and gives it its byte range.
fn locate(
    name: String,
    dims: Vec<u64>,
    ty: TensorType,
    offset: u64,
    data_start: u64,
    alignment: u64,
    file_len: usize,
) -> ParseResult<TensorInfo> {
    // Positive dimensions whose product fits ggml's int64 element count: then every product of
    // some of them (rows, an expert's offset) fits too, whatever a later read multiplies.
    let elements = dims
        .iter()
        .try_fold(1u64, |total, &d| total.checked_mul(d))
        .filter(|&n| n <= i64::MAX as u64);
    if dims.contains(&0) || elements.is_none() {
        return Err(format!(
            "tensor `{name}` has dimensions {dims:?}: each must be at least 1 and their product \
             must fit in 63 bits"
        ));
    }
    let row_bytes = ty.bytes_for(dims[0]).ok_or_else(|| {
        format!(
            "tensor `{name}` has rows of {} values, not a whole number of {} blocks of {}",
            dims[0],
            ty.name(),
            ty.block_len()
        )
    })?;
    let len = dims[1..]
        .iter()
        .try_fold(row_bytes, |total, &d| total.checked_mul(d))
        .ok_or_else(|| format!("tensor `{name}` has dimensions {dims:?}, too large to address"))?;
    if !offset.is_multiple_of(alignment) {
        return Err(format!(
            "tensor `{name}` starts at data offset {offset}, not a multiple of the alignment \
             {alignment}"
        ));
    }
    let start = data_start.checked_add(offset);
    let end = start.and_then(|s| s.checked_add(len));
    match (start, end) {
        (Some(start), Some(end)) if end <= file_len as u64 => Ok(TensorInfo {
            name,
            dims,
            ty,
            start: start as usize,
            len: len as usize,
        }),
        _ => Err(format!(
            "tensor data out of bounds: `{name}` ({} {dims:?}) needs {len} bytes from offset {} \
             but the file is {file_len} bytes long (truncated?)",
            ty.name(),
            data_start.saturating_add(offset)
        )),
    }
}

/// The whole mapped file, so weights can hold it (`quantized::SharedBytes`) and read in place.
impl AsRef<[u8]> for GgufFile {
    fn as_ref(&self) -> &[u8] {
        self.mapped()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> Vec<u8> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf/lite-q8_0.gguf");
        std::fs::read(path).unwrap()
    }

    /// Where the tensor data starts: everything before it is header.
    fn header_len(bytes: &[u8]) -> usize {
        let parsed = parse(bytes).unwrap();
        parsed.tensors.iter().map(|t| t.start).min().unwrap()
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = fixture();
        let header = header_len(&bytes);
        let data_end = parse(&bytes)
            .unwrap()
            .tensors
            .iter()
            .map(|t| t.start + t.len)
            .max()
            .unwrap();
        // Every cut inside the header, and a spread of cuts inside the data.
        let cuts = (0..header).chain((header..data_end).step_by(997));
        for cut in cuts {
            match parse(&bytes[..cut]) {
                Ok(_) => panic!("cut at {cut} of {} parsed", bytes.len()),
                Err(message) => assert!(
                    message.starts_with("truncated")
                        || message.contains("tensor data out of bounds")
                        || message.contains("claims"),
                    "cut at {cut}: {message}"
                ),
            }
        }
    }

    #[test]
    fn no_corrupted_header_byte_panics() {
        let bytes = fixture();
        let header = header_len(&bytes);
        let mut corrupted = bytes.clone();
        for at in 0..header {
            for flip in [0xff, 0x80, 0x01] {
                corrupted[at] ^= flip;
                // Ok or Err, never a panic or a huge allocation.
                let _ = parse(&corrupted);
                corrupted[at] ^= flip;
            }
        }
    }

    /// Resident kilobytes of the mapping that holds `address` (`/proc/self/smaps`).
    #[cfg(target_os = "linux")]
    fn resident_kib_of_mapping(address: usize) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ')
                && let Some((low, high)) = range.split_once('-')
                && let (Ok(low), Ok(high)) = (
                    usize::from_str_radix(low, 16),
                    usize::from_str_radix(high, 16),
                )
            {
                inside = (low..high).contains(&address);
            } else if inside && let Some(rest) = line.strip_prefix("Rss:") {
                return rest.trim().trim_end_matches("kB").trim().parse().unwrap();
            }
        }
        panic!("no mapping holds {address:#x}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn released_pages_leave_the_process_and_read_back_the_same() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf/lite-q8_0.gguf");
        let file = GgufFile::open(&path).unwrap();
        let bytes = file.mapped();
        let copy = bytes.to_vec();
        let address = bytes.as_ptr() as usize;
        let touched = resident_kib_of_mapping(address);
        assert!(
            touched * 1024 >= bytes.len() as u64 / 2,
            "{touched} kB resident"
        );
        // A range that starts and ends inside pages: the pages holding it go.
        file.release(&bytes[100..bytes.len() - 100]);
        let released = resident_kib_of_mapping(address);
        assert!(
            released * 1024 <= bytes.len() as u64 / 8,
            "{touched} kB resident before, {released} kB after"
        );
        assert!(
            file.mapped() == copy.as_slice(),
            "the bytes read back the same"
        );
        // Bytes from elsewhere are ignored.
        file.release(&copy);
    }
}
