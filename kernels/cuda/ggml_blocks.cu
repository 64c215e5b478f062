// GGUF's block formats read on the GPU: one weight value from a row of blocks, as ggml's
// dequantize_row_* computes it (the same products; the compiler may fuse a multiply and a
// subtraction, so a value can differ from the CPU's in its last bit). Prepended to
// moe_grouped_matmul.cu, whose products read quantized weights through these.
//
// CPU reference: kernels::quant::dequantize (bit-exact against gguf-py's dequantizer).
//
// A format is a struct with VALUES (values per block), BYTES (bytes per block), value(row, i):
// value i of a row that starts at `row`, and run(row, r, out): values 32r..32r+32 at once (a
// Q*_0 block, a K-quant sub-block), reading the block's factors once. Rows are whole blocks.

// IEEE half bits to float, exactly (NVRTC has no cuda_fp16.h without the toolkit's headers).
__device__ __forceinline__ float half_to_float(unsigned int h) {
    const unsigned int sign = (h & 0x8000u) << 16, exponent = (h >> 10) & 0x1fu,
                       mantissa = h & 0x3ffu;
    if (exponent == 0) {
        // Zero or subnormal: mantissa * 2^-24, exact in f32.
        const float magnitude = (float)mantissa * 5.9604644775390625e-8f;
        return sign ? -magnitude : magnitude;
    }
    if (exponent == 31) return __uint_as_float(sign | 0x7f800000u | (mantissa << 13));
    return __uint_as_float(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

// Blocks start at even offsets only: read halves byte by byte.
__device__ __forceinline__ float half_at(const unsigned char* p) {
    return half_to_float((unsigned int)p[0] | ((unsigned int)p[1] << 8));
}

struct F16Format {
    static constexpr int VALUES = 1, BYTES = 2;
    static __device__ __forceinline__ float value(const unsigned char* row, int i) {
        return half_at(row + 2 * i);
    }
    static __device__ __forceinline__ void run(const unsigned char* row, int r, float* out) {
        for (int t = 0; t < 32; ++t) out[t] = half_at(row + 2 * (32 * r + t));
    }
};

// d (f16), 32 signed bytes.
struct Q8_0Format {
    static constexpr int VALUES = 32, BYTES = 34;
    static __device__ __forceinline__ float value(const unsigned char* row, int i) {
        const unsigned char* block = row + (i / 32) * BYTES;
        return (float)(signed char)block[2 + i % 32] * half_at(block);
    }
    static __device__ __forceinline__ void run(const unsigned char* row, int r, float* out) {
        const unsigned char* block = row + r * BYTES;
        const float d = half_at(block);
        for (int t = 0; t < 32; ++t) out[t] = (float)(signed char)block[2 + t] * d;
    }
};

// d (f16), 16 bytes of nibbles: value j < 16 is byte j's low nibble, j >= 16 byte j-16's high.
struct Q4_0Format {
    static constexpr int VALUES = 32, BYTES = 18;
    static __device__ __forceinline__ float value(const unsigned char* row, int i) {
        const unsigned char* block = row + (i / 32) * BYTES;
        const int j = i % 32;
        const int q = j < 16 ? (block[2 + j] & 0xf) : (block[2 + j - 16] >> 4);
        return (float)(q - 8) * half_at(block);
    }
    static __device__ __forceinline__ void run(const unsigned char* row, int r, float* out) {
        const unsigned char* block = row + r * BYTES;
        const float d = half_at(block);
        for (int t = 0; t < 16; ++t) {
            out[t] = (float)((block[2 + t] & 0xf) - 8) * d;
            out[t + 16] = (float)((block[2 + t] >> 4) - 8) * d;
        }
    }
};

// d (f16), 32 fifth bits (little-endian), 16 bytes of nibbles as Q4_0.
struct Q5_0Format {
    static constexpr int VALUES = 32, BYTES = 22;
    static __device__ __forceinline__ float value(const unsigned char* row, int i) {
        const unsigned char* block = row + (i / 32) * BYTES;
        const unsigned int high = (unsigned int)block[2] | ((unsigned int)block[3] << 8) |
                                  ((unsigned int)block[4] << 16) | ((unsigned int)block[5] << 24);
        const int j = i % 32;
        const int q = j < 16 ? ((block[6 + j] & 0xf) | (((high >> j) << 4) & 0x10))
                             : ((block[6 + j - 16] >> 4) | ((high >> (j - 16 + 12)) & 0x10));
        return (float)(q - 16) * half_at(block);
    }
    static __device__ __forceinline__ void run(const unsigned char* row, int r, float* out) {
        const unsigned char* block = row + r * BYTES;
        const float d = half_at(block);
        const unsigned int high = (unsigned int)block[2] | ((unsigned int)block[3] << 8) |
                                  ((unsigned int)block[4] << 16) | ((unsigned int)block[5] << 24);
        for (int t = 0; t < 16; ++t) {
            const int low = (block[6 + t] & 0xf) | (((high >> t) << 4) & 0x10);
            const int upper = (block[6 + t] >> 4) | ((high >> (t + 12)) & 0x10);
            out[t] = (float)(low - 16) * d;
            out[t + 16] = (float)(upper - 16) * d;
        }
    }
};

// A Q4_K or Q5_K block's factor and offset for sub-block j (0..8), value = factor * q - offset:
// d times the sub-block's 6-bit scale and dmin times its 6-bit min, both packed in the 12
// bytes after d and dmin.
__device__ __forceinline__ void sub_block_factors(const unsigned char* block, int j,
                                                  float& factor, float& offset) {
    const unsigned char* packed = block + 4;
    int scale, min;
    if (j < 4) {
        scale = packed[j] & 63;
        min = packed[j + 4] & 63;
    } else {
        scale = (packed[j + 4] & 0xf) | ((packed[j - 4] >> 6) << 4);
        min = (packed[j + 4] >> 4) | ((packed[j] >> 6) << 4);
    }
    factor = half_at(block) * (float)scale;
    offset = half_at(block + 2) * (float)min;
}

// d, dmin (f16), 12 bytes of scales and mins, 128 bytes of nibbles: 4 runs of 64 values, each
// the low nibbles of 32 bytes then their high nibbles, one sub-block of 32 each.
struct Q4KFormat {
    static constexpr int VALUES = 256, BYTES = 144;
    static __device__ __forceinline__ float value(const unsigned char* row, int i) {
        const unsigned char* block = row + (i / 256) * BYTES;
        const int w = i % 256, run = w / 64, high = (w % 64) >= 32, l = w % 32;
        float factor, offset;
        sub_block_factors(block, 2 * run + high, factor, offset);
        const unsigned char q = block[16 + 32 * run + l];
        return factor * (float)(high ? q >> 4 : q & 0xf) - offset;
    }
    // Run r is sub-block r % 8 of block r / 8: run of 64 (sub-block / 2), low or high nibbles.
    static __device__ __forceinline__ void run(const unsigned char* row, int r, float* out) {
        const unsigned char* block = row + (r / 8) * BYTES;
        const int sub = r % 8, shift = 4 * (sub % 2);
        float factor, offset;
        sub_block_factors(block, sub, factor, offset);
        const unsigned char* quants = block + 16 + 32 * (sub / 2);
        for (int l = 0; l < 32; ++l) out[l] = factor * (float)((quants[l] >> shift) & 0xf) - offset;
    }
};

// As Q4_K with a fifth bit per value from 32 bytes before the nibbles: run r's low nibbles
// take bit 2r, its high nibbles bit 2r + 1.
struct Q5KFormat {
    static constexpr int VALUES = 256, BYTES = 176;
    static __device__ __forceinline__ float value(const unsigned char* row, int i) {
        const unsigned char* block = row + (i / 256) * BYTES;
        const int w = i % 256, run = w / 64, high = (w % 64) >= 32, l = w % 32;
        float factor, offset;
        sub_block_factors(block, 2 * run + high, factor, offset);
        const unsigned char q = block[48 + 32 * run + l];
        const int fifth = (block[16 + l] >> (2 * run + high)) & 1;
        return factor * (float)((high ? q >> 4 : q & 0xf) + 16 * fifth) - offset;
    }
    static __device__ __forceinline__ void run(const unsigned char* row, int r, float* out) {
        const unsigned char* block = row + (r / 8) * BYTES;
        const int sub = r % 8, shift = 4 * (sub % 2);
        float factor, offset;
        sub_block_factors(block, sub, factor, offset);
        const unsigned char* quants = block + 48 + 32 * (sub / 2);
        for (int l = 0; l < 32; ++l) {
            const int value = ((quants[l] >> shift) & 0xf) + 16 * ((block[16 + l] >> sub) & 1);
            out[l] = factor * (float)value - offset;
        }
    }
};

// 128 bytes of low nibbles, 64 of high bit pairs, 16 signed scales, d (f16): two halves of 128
// values, each four quarters of 32 (quarters 0/1 the low nibbles of bytes 0..32 / 32..64,
// 2/3 their high nibbles, the high bits at 2 x quarter), a scale per 16 values.
struct Q6KFormat {
    static constexpr int VALUES = 256, BYTES = 210;
    static __device__ __forceinline__ float value(const unsigned char* row, int i) {
        const unsigned char* block = row + (i / 256) * BYTES;
        const int w = i % 256, half = w / 128, quarter = (w % 128) / 32, l = w % 32;
        const unsigned char low = block[64 * half + l + 32 * (quarter & 1)];
        const int nibble = quarter < 2 ? low & 0xf : low >> 4;
        const int high = (block[128 + 32 * half + l] >> (2 * quarter)) & 3;
        const int scale = (signed char)block[192 + 8 * half + l / 16 + 2 * quarter];
        return half_at(block + 208) * (float)scale * (float)((nibble | (high << 4)) - 32);
    }
    // Run r is quarter r % 4 of half (r % 8) / 4 of block r / 8.
    static __device__ __forceinline__ void run(const unsigned char* row, int r, float* out) {
        const unsigned char* block = row + (r / 8) * BYTES;
        const int half = (r % 8) / 4, quarter = r % 4, shift = quarter < 2 ? 0 : 4;
        const float d = half_at(block + 208);
        const unsigned char* lows = block + 64 * half + 32 * (quarter & 1);
        const unsigned char* highs = block + 128 + 32 * half;
        const signed char* scales = (const signed char*)block + 192 + 8 * half + 2 * quarter;
        for (int l = 0; l < 32; ++l) {
            const int q = (((lows[l] >> shift) & 0xf) | (((highs[l] >> (2 * quarter)) & 3) << 4)) - 32;
            out[l] = d * (float)scales[l / 16] * (float)q;
        }
    }
};

// A stack of [experts, n, k] matrices in format F, each row `k / F::VALUES` blocks.
template <typename F>
struct Blocks {
    const unsigned char* bytes;
};
