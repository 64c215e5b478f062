#!/usr/bin/env python3
"""Writes random ggml blocks of every tensor type the kernels read, with the values the reference
dequantizer of the `gguf` Python package (gguf-py, llama.cpp's own) gives for them.

The Rust test kernels/tests/dequantize_matches_gguf_py.rs compares `kernels::quant::dequantize`
with these values bit for bit, without Python at test time.

The blocks are deliberately awkward: every quant payload byte is random (all nibbles, fifth and
sixth bits, packed 6-bit scales and mins, signed Q6_K scales), while the f16 block scales are
finite but include +0, -0, negative values, subnormals and +-65504. The plain float types get
fully random bit patterns, with +-0, +-inf, quiet and signalling NaNs, the smallest subnormal and
the largest finite value planted at the start.

File format (all little-endian):
  b"QFIX", u32 version (1), u32 entry count, then per entry:
  u32 ggml type id, u32 rows, u32 cols, u32 byte count,
  the rows' bytes exactly as in a GGUF file,
  rows * cols f32 values: gguf.quants.dequantize of those bytes.

Usage:  python tools/gguf_reference/make_quant_fixtures.py [OUT_FILE]
        (default: kernels/tests/fixtures/quant_blocks.bin)
Needs:  pip install -r tools/requirements.txt   (numpy, gguf==0.17.1)
Output is a pure function of SEED: rerunning writes the same file.
"""

import hashlib
import struct
import sys
from pathlib import Path

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType as T
from gguf.quants import dequantize

SEED = 20240610
DEFAULT_OUT = Path(__file__).resolve().parents[2] / "kernels/tests/fixtures/quant_blocks.bin"

# (type, rows, blocks per row, byte offsets of the f16 scales inside one block)
CASES = [
    (T.F32, 3, 37, []),
    (T.F16, 3, 37, []),
    (T.BF16, 3, 37, []),
    (T.Q4_0, 4, 7, [0]),
    (T.Q5_0, 4, 7, [0]),
    (T.Q8_0, 4, 7, [0]),
    (T.Q4_K, 4, 4, [0, 2]),  # d, dmin
    (T.Q5_K, 4, 4, [0, 2]),  # d, dmin
    (T.Q6_K, 4, 4, [208]),  # d sits after ql, qh and the scales
]


def awkward_f16_scales(rng: np.random.Generator, count: int) -> np.ndarray:
    """Finite f16 scales: mostly ordinary magnitudes of either sign, plus the corner cases."""
    corners = np.array(
        [0.0, -0.0, 65504.0, -65504.0, 2.0**-24, -(2.0**-24), 3.0 * 2.0**-20, 1.0, -1.0],
        dtype=np.float16,
    )
    magnitudes = np.exp(rng.uniform(np.log(1e-4), np.log(10.0), size=count))
    signs = rng.choice([-1.0, 1.0], size=count)
    scales = (signs * magnitudes).astype(np.float16)
    pick_corner = rng.random(count) < 0.25
    scales[pick_corner] = rng.choice(corners, size=int(pick_corner.sum()))
    assert np.isfinite(scales).all()
    return scales


# Bit patterns planted at the start of the float types' first row, so that the corners are there
# whatever the random bits: +-0, +-inf, a quiet and a signalling NaN, the smallest subnormal, the
# largest finite value.
SPECIAL_FLOATS = {
    T.F32: np.array([0x00000000, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00001, 0x7F800001, 0x00000001, 0x7F7FFFFF], dtype="<u4"),
    T.F16: np.array([0x0000, 0x8000, 0x7C00, 0xFC00, 0x7E01, 0x7C01, 0x0001, 0x7BFF], dtype="<u2"),
    T.BF16: np.array([0x0000, 0x8000, 0x7F80, 0xFF80, 0x7FC1, 0x7F81, 0x0001, 0x7F7F], dtype="<u2"),
}


def random_rows(rng: np.random.Generator, qtype: T, rows: int, blocks: int, scale_offsets) -> np.ndarray:
    _, block_bytes = GGML_QUANT_SIZES[qtype]
    data = rng.integers(0, 256, size=(rows, blocks, block_bytes), dtype=np.uint8)
    if qtype in SPECIAL_FLOATS:
        special = SPECIAL_FLOATS[qtype].view(np.uint8)
        data.reshape(rows, -1)[0, : special.size] = special
    for offset in scale_offsets:
        scales = awkward_f16_scales(rng, rows * blocks).reshape(rows, blocks)
        data[:, :, offset : offset + 2] = scales.view(np.uint8).reshape(rows, blocks, 2)
    return data.reshape(rows, blocks * block_bytes)


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT
    rng = np.random.default_rng(SEED)
    parts = [b"QFIX", struct.pack("<II", 1, len(CASES))]
    for qtype, rows, blocks, scale_offsets in CASES:
        block_len, _ = GGML_QUANT_SIZES[qtype]
        data = random_rows(rng, qtype, rows, blocks, scale_offsets)
        values = np.ascontiguousarray(dequantize(data, qtype), dtype=np.float32)
        cols = blocks * block_len
        assert values.shape == (rows, cols), (qtype.name, values.shape)
        if scale_offsets:
            assert np.isfinite(values).all(), qtype.name
        parts.append(struct.pack("<IIII", int(qtype), rows, cols, data.nbytes))
        parts.append(data.tobytes())
        parts.append(values.astype("<f4").tobytes())
    blob = b"".join(parts)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(blob)
    print(f"wrote {out} ({len(blob)} bytes, sha256 {hashlib.sha256(blob).hexdigest()})")


if __name__ == "__main__":
    main()
