// The experts' projections for a prompt, all experts in one launch: the tokens routed to each
// expert are consecutive rows (expert 0's rows, then expert 1's...), and
//
//   y[r, :] = x[s(r), :] W_e^T   for the rows r of expert e,   W_e = w[e] ([n, k], as a Linear's)
//
// where s(r) = row_token[r] when row_token is given (the gather of each row's token is read in
// place, moe_expert_rows.cu lists them) and s(r) = r when it is null (x already in row order).
//
// Tiles of 64 rows x 64 outputs, 256 threads each computing 4 x 4, k in steps of 16 through
// shared memory; a tile never spans two experts (each expert's rows start a new tile), and the
// tiles of each expert are listed in tile_offsets, so idle experts cost nothing.
//
// CPU reference: kernels::grouped_matmul::grouped_matmul, of x's rows gathered by row_token.
// Weights are f32 (moe_grouped_matmul_f32), bf16 bits (_bf16), or rows of GGUF blocks
// (_f16, _q8_0, _q4_0, _q5_0, _q4_k, _q5_k, _q6_k: ggml_blocks.cu, which comes first); x and y
// are f32 and the sums are kept in f32. A dense Linear is the same product with one expert.
// Three kernels compute it: these f32 tiles, the same tiles on tensor cores in bf16
// (moe_grouped_mma_*, below) and a matvec for few rows per expert (moe_expert_matvec_*).
//
// Launch: grid (ceil(n / 64), at least tile_offsets[experts]), block (256). Tiles past the last
// exit at once, so a launch may be sized before the routing is known (most_row_tiles).

#define TILE_ROWS 64
#define TILE_COLS 64
#define TILE_K 16
#define THREADS 256

__device__ __forceinline__ float weight_value(const float* w, size_t i) { return w[i]; }

// bf16 is the top half of an f32: the conversion is exact.
__device__ __forceinline__ float weight_value(const unsigned short* w, size_t i) {
    return __uint_as_float(((unsigned int)w[i]) << 16);
}

// Value `col` of weight row `row` (counted over all experts' rows) of a [.., k] stack.
__device__ __forceinline__ float weight_at(const float* w, size_t row, int col, int k) {
    return weight_value(w, row * k + col);
}

__device__ __forceinline__ float weight_at(const unsigned short* w, size_t row, int col, int k) {
    return weight_value(w, row * k + col);
}

template <typename F>
__device__ __forceinline__ float weight_at(Blocks<F> w, size_t row, int col, int k) {
    return F::value(w.bytes + row * (size_t)(k / F::VALUES * F::BYTES), col);
}

// The row tile blockIdx.y stands for: its expert (the last whose tiles start at or before it),
// its first row and the expert's end row. False for a tile past the routing's last (a launch is
// sized for the most tiles any routing can take).
struct RowTile {
    int expert, first_row, end_row;
};

__device__ __forceinline__ bool row_tile(const int* __restrict__ row_offsets,
                                         const int* __restrict__ tile_offsets, int experts,
                                         RowTile& rows) {
    const int tile = blockIdx.y;
    if (tile >= tile_offsets[experts]) return false;
    int expert = 0;
    while (expert + 1 < experts && tile_offsets[expert + 1] <= tile) ++expert;
    rows.expert = expert;
    rows.first_row = row_offsets[expert] + (tile - tile_offsets[expert]) * TILE_ROWS;
    rows.end_row = row_offsets[expert + 1];
    return true;
}

template <typename Weights>
__device__ void grouped_matmul(const float* __restrict__ x, Weights w,
                               const int* __restrict__ row_token,
                               const int* __restrict__ row_offsets,
                               const int* __restrict__ tile_offsets, int experts, int n, int k,
                               float* __restrict__ y) {
    __shared__ float x_tile[TILE_K][TILE_ROWS + 1];
    __shared__ float w_tile[TILE_K][TILE_COLS + 1];

    RowTile rows;
    if (!row_tile(row_offsets, tile_offsets, experts, rows)) return;
    const int first_row = rows.first_row, end_row = rows.end_row;
    const int first_col = blockIdx.x * TILE_COLS;
    const size_t first_weight_row = (size_t)rows.expert * n;

    const int tid = threadIdx.x;
    const int thread_row = (tid / 16) * 4, thread_col = (tid % 16) * 4;
    float sums[4][4] = {};

    for (int k0 = 0; k0 < k; k0 += TILE_K) {
        // 64 x 16 values of x and of W each, four per thread, stored k-major.
        for (int i = tid; i < TILE_ROWS * TILE_K; i += THREADS) {
            const int r = i / TILE_K, kk = i % TILE_K;
            const int row = first_row + r, col = k0 + kk;
            x_tile[kk][r] = (row < end_row && col < k)
                                ? x[(size_t)(row_token ? row_token[row] : row) * k + col]
                                : 0.0f;
            const int out = first_col + r;
            w_tile[kk][r] =
                (out < n && col < k) ? weight_at(w, first_weight_row + out, col, k) : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < TILE_K; ++kk) {
            float a[4], b[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                a[i] = x_tile[kk][thread_row + i];
                b[i] = w_tile[kk][thread_col + i];
            }
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) sums[i][j] += a[i] * b[j];
        }
        __syncthreads();
    }

#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int row = first_row + thread_row + i;
        if (row >= end_row) continue;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int col = first_col + thread_col + j;
            if (col < n) y[(size_t)row * n + col] = sums[i][j];
        }
    }
}

// x [rows, k] f32 (rows grouped by expert), or [tokens, k] with row_token [rows] naming each
// row's token; w [experts, n, k] f32, row_offsets [experts + 1], tile_offsets [experts + 1]
// (expert e's row tiles are tile_offsets[e]..tile_offsets[e + 1]), y [rows, n] f32.
extern "C" __global__ void __launch_bounds__(THREADS)
moe_grouped_matmul_f32(const float* __restrict__ x, const float* __restrict__ w,
                       const int* __restrict__ row_token, const int* __restrict__ row_offsets,
                       const int* __restrict__ tile_offsets, int experts, int n, int k,
                       float* __restrict__ y) {
    grouped_matmul(x, w, row_token, row_offsets, tile_offsets, experts, n, k, y);
}

// As moe_grouped_matmul_f32 with w as bf16 bits.
extern "C" __global__ void __launch_bounds__(THREADS)
moe_grouped_matmul_bf16(const float* __restrict__ x, const unsigned short* __restrict__ w,
                        const int* __restrict__ row_token, const int* __restrict__ row_offsets,
                        const int* __restrict__ tile_offsets, int experts, int n, int k,
                        float* __restrict__ y) {
    grouped_matmul(x, w, row_token, row_offsets, tile_offsets, experts, n, k, y);
}

// The same product when the experts have few rows each (a decode step: one; a keystroke's few
// dozen tokens over 64 experts: a handful): the 64-row tiles above would spend most of their
// multiply-adds on empty rows, and these products are reads of the experts' weights, so here
// one warp streams one weight row W_e[j, :] once per MATVEC_ROWS of the expert's rows:
//
//   y[r, j] = x[s(r), :] . W_e[j, :]   for the rows r of expert e
//
// Grid (ceil(n / MATVEC_WARPS), experts), block (32 * MATVEC_WARPS); an expert without rows
// exits at once. Weight rows are read 16 bytes per lane where k allows (a multiple of 4 f32 or
// 8 bf16 values) and the weights start 16-byte aligned, else value by value.

#define MATVEC_WARPS 8
#define MATVEC_ROWS 4

// The 4 f32 or 8 bf16 weights at w[c..] (16 bytes, aligned) as floats.
__device__ __forceinline__ void unpack16(const float* __restrict__ w, int c, float* out) {
    const float4 v = *reinterpret_cast<const float4*>(w + c);
    out[0] = v.x;
    out[1] = v.y;
    out[2] = v.z;
    out[3] = v.w;
}

__device__ __forceinline__ void unpack16(const unsigned short* __restrict__ w, int c, float* out) {
    const uint4 v = *reinterpret_cast<const uint4*>(w + c);
    const unsigned int words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        out[2 * i] = __uint_as_float(words[i] << 16);
        out[2 * i + 1] = __uint_as_float(words[i] & 0xffff0000u);
    }
}

// One warp per weight row j of expert blockIdx.y, over the expert's rows MATVEC_ROWS at a time:
// `add_rows(weight_row, lane, inputs, sums)` adds this lane's share of each pass row's input
// times weight row `weight_row` (counted over all experts' rows) into `sums`; the warp then sums
// its lanes and writes y. Past the expert's last row a pass repeats it (computed, not written).
template <typename AddRows>
__device__ __forceinline__ void matvec_passes(const float* __restrict__ x,
                                              const int* __restrict__ row_token,
                                              const int* __restrict__ row_offsets, int n, int k,
                                              float* __restrict__ y, AddRows add_rows) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int j = blockIdx.x * MATVEC_WARPS + warp;
    const int expert = blockIdx.y;
    if (j >= n) return;
    const int first = row_offsets[expert], end = row_offsets[expert + 1];
    const size_t weight_row = (size_t)expert * n + j;

    for (int r0 = first; r0 < end; r0 += MATVEC_ROWS) {
        const int rows = min(MATVEC_ROWS, end - r0);
        const float* inputs[MATVEC_ROWS];
#pragma unroll
        for (int i = 0; i < MATVEC_ROWS; ++i) {
            const int r = r0 + min(i, rows - 1);
            inputs[i] = x + (size_t)(row_token ? row_token[r] : r) * k;
        }
        float sums[MATVEC_ROWS] = {};
        add_rows(weight_row, lane, inputs, sums);
#pragma unroll
        for (int i = 0; i < MATVEC_ROWS; ++i) {
            float sum = sums[i];
            for (int offset = 16; offset > 0; offset /= 2)
                sum += __shfl_xor_sync(0xffffffffu, sum, offset);
            if (lane == 0 && i < rows) y[(size_t)(r0 + i) * n + j] = sum;
        }
    }
}

// The matvec for f32 or bf16 weights.
template <typename Weight>
__device__ void expert_matvec(const float* __restrict__ x, const Weight* __restrict__ w,
                              const int* __restrict__ row_token,
                              const int* __restrict__ row_offsets, int n, int k,
                              float* __restrict__ y) {
    constexpr int per_load = 16 / sizeof(Weight);
    const bool vectors = k % per_load == 0 && ((size_t)w & 15) == 0;
    matvec_passes(x, row_token, row_offsets, n, k, y,
                  [&](size_t weight_row, int lane, const float* const* inputs, float* sums) {
                      const Weight* weights = w + weight_row * k;
                      if (vectors) {
                          for (int c = lane * per_load; c < k; c += 32 * per_load) {
                              float values[per_load];
                              unpack16(weights, c, values);
#pragma unroll
                              for (int i = 0; i < MATVEC_ROWS; ++i)
#pragma unroll
                                  for (int t = 0; t < per_load; ++t)
                                      sums[i] += inputs[i][c + t] * values[t];
                          }
                      } else {
                          for (int c = lane; c < k; c += 32) {
                              const float value = weight_value(weights, c);
#pragma unroll
                              for (int i = 0; i < MATVEC_ROWS; ++i) sums[i] += inputs[i][c] * value;
                          }
                      }
                  });
}

// As moe_grouped_matmul_f32 (without tile_offsets), for experts with few rows each.
extern "C" __global__ void __launch_bounds__(32 * MATVEC_WARPS)
moe_expert_matvec_f32(const float* __restrict__ x, const float* __restrict__ w,
                      const int* __restrict__ row_token, const int* __restrict__ row_offsets,
                      int experts, int n, int k, float* __restrict__ y) {
    expert_matvec(x, w, row_token, row_offsets, n, k, y);
}

// As moe_grouped_matmul_bf16 (without tile_offsets), for experts with few rows each.
extern "C" __global__ void __launch_bounds__(32 * MATVEC_WARPS)
moe_expert_matvec_bf16(const float* __restrict__ x, const unsigned short* __restrict__ w,
                       const int* __restrict__ row_token, const int* __restrict__ row_offsets,
                       int experts, int n, int k, float* __restrict__ y) {
    expert_matvec(x, w, row_token, row_offsets, n, k, y);
}

// The matvec for weights in GGUF blocks: one warp per weight row as above, each lane decoding
// runs of 32 values (a Q*_0 block, a K-quant sub-block) in turn, each block's factors read
// once per run; values past the last whole run (F16 rows of another length) one by one.
template <typename F>
__device__ void blocks_matvec(const float* __restrict__ x, Blocks<F> w,
                              const int* __restrict__ row_token,
                              const int* __restrict__ row_offsets, int n, int k,
                              float* __restrict__ y) {
    matvec_passes(x, row_token, row_offsets, n, k, y,
                  [&](size_t weight_row, int lane, const float* const* inputs, float* sums) {
                      const unsigned char* row_blocks =
                          w.bytes + weight_row * (size_t)(k / F::VALUES * F::BYTES);
                      for (int r = lane; r < k / 32; r += 32) {
                          float values[32];
                          F::run(row_blocks, r, values);
#pragma unroll
                          for (int i = 0; i < MATVEC_ROWS; ++i)
#pragma unroll
                              for (int t = 0; t < 32; ++t)
                                  sums[i] += inputs[i][32 * r + t] * values[t];
                      }
                      for (int c = k / 32 * 32 + lane; c < k; c += 32) {
                          const float value = F::value(row_blocks, c);
#pragma unroll
                          for (int i = 0; i < MATVEC_ROWS; ++i) sums[i] += inputs[i][c] * value;
                      }
                  });
}

// The tiles on tensor cores: x's values rounded to bf16 (a bf16 model's activations already
// are) times the weights rounded to bf16 (exact for bf16 weights; for GGUF blocks the same
// rounding a bf16 copy of the file's weights would take) by mma.sync m16n8k16 (compute 8.0 and
// later), the sums kept in f32. The same 64-row x 64-output tiles as the f32 tiles, k in steps
// of 32 (a run of 32 weights: a Q*_0 block, a K-quant sub-block), 128 threads: four warps of
// 32 x 32 outputs, each 2 x 4 mma tiles of 16 x 8. In each step every thread brings pairs of
// x and of bf16 weights, 16 consecutive threads per row; for GGUF blocks threads 0..63 each
// decode one weight row's 32 values with the block's factors read once, the others bring x.
// Launch: grid (ceil(n / 64), at least tile_offsets[experts]), block (MMA_THREADS).

#define MMA_THREADS 128
#define MMA_STEP 32

#ifndef CUDA_ON_CPU
// D = A B + C over one warp's fragments (the PTX ISA's layouts for m16n8k16; cuda_on_cpu.h
// spells them out for its emulation of this instruction).
__device__ __forceinline__ void mma_bf16_16x8x16(float* c, const unsigned int* a,
                                                 const unsigned int* b) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
#endif

// f32 to bf16 bits, rounded to nearest even (a NaN stays a NaN).
__device__ __forceinline__ unsigned int bf16_bits(float value) {
    const unsigned int bits = __float_as_uint(value);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (bits >> 16) | 0x40u;
    return (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
}

// One step's pairs of a tile: 64 rows of 16 pairs of bf16 bits along k (values k0..k0 + 31),
// rows past `end` and values past k zero.
typedef unsigned int StepPairs[TILE_ROWS][MMA_STEP / 2 + 1];

// x's rows first_row.. of a step (row r is x's row row_token[r], or r), by `threads` threads
// from `thread` on, 16 consecutive threads per row (one pair each: each row's 128 bytes are
// read together).
__device__ __forceinline__ void load_x_pairs(const float* __restrict__ x,
                                             const int* __restrict__ row_token, int first_row,
                                             int end_row, int k0, int k, StepPairs& pairs,
                                             int thread, int threads) {
    const int p = thread % (MMA_STEP / 2), col = k0 + 2 * p;
    for (int r = thread / (MMA_STEP / 2); r < TILE_ROWS; r += threads / (MMA_STEP / 2)) {
        const int row = first_row + r;
        unsigned int pair = 0;
        if (row < end_row) {
            const float* x_row = x + (size_t)(row_token ? row_token[row] : row) * k;
            pair = (col < k ? bf16_bits(x_row[col]) : 0u) |
                   ((col + 1 < k ? bf16_bits(x_row[col + 1]) : 0u) << 16);
        }
        pairs[r][p] = pair;
    }
}

// A step's x and bf16 weights (rows first_weight_row.. of a [.., k] stack, the tile's outputs
// below n), every thread loading both the way load_x_pairs does: a weight pair is a pair of
// the row's values as they are.
__device__ __forceinline__ void load_step(const unsigned short* __restrict__ w,
                                          size_t first_weight_row, int outputs,
                                          const float* __restrict__ x,
                                          const int* __restrict__ row_token, int first_row,
                                          int end_row, int k0, int k, StepPairs& x_pairs,
                                          StepPairs& w_pairs) {
    const int tid = threadIdx.x;
    load_x_pairs(x, row_token, first_row, end_row, k0, k, x_pairs, tid, MMA_THREADS);
    const int p = tid % (MMA_STEP / 2), col = k0 + 2 * p;
    for (int r = tid / (MMA_STEP / 2); r < TILE_COLS; r += MMA_THREADS / (MMA_STEP / 2)) {
        unsigned int pair = 0;
        if (r < outputs) {
            const unsigned short* w_row = w + (first_weight_row + r) * (size_t)k;
            pair = (col < k ? (unsigned int)w_row[col] : 0u) |
                   ((col + 1 < k ? (unsigned int)w_row[col + 1] : 0u) << 16);
        }
        w_pairs[r][p] = pair;
    }
}

// The same for weights in GGUF blocks: threads 0..63 each decode one weight row's run of 32
// values (a Q*_0 block, a K-quant sub-block: the block's factors read once) and round them to
// bf16; the other 64 threads load x.
template <typename F>
__device__ __forceinline__ void load_step(Blocks<F> w, size_t first_weight_row, int outputs,
                                          const float* __restrict__ x,
                                          const int* __restrict__ row_token, int first_row,
                                          int end_row, int k0, int k, StepPairs& x_pairs,
                                          StepPairs& w_pairs) {
    const int tid = threadIdx.x;
    if (tid >= TILE_COLS) {
        load_x_pairs(x, row_token, first_row, end_row, k0, k, x_pairs, tid - TILE_COLS,
                     MMA_THREADS - TILE_COLS);
        return;
    }
    float values[MMA_STEP] = {};
    if (tid < outputs) {
        const unsigned char* row_blocks =
            w.bytes + (first_weight_row + tid) * (size_t)(k / F::VALUES * F::BYTES);
        if (k0 + MMA_STEP <= k) {
            F::run(row_blocks, k0 / MMA_STEP, values);
        } else {
            // The last values of an F16 row whose length is not a multiple of 32.
#pragma unroll
            for (int t = 0; t < MMA_STEP; ++t)
                values[t] = k0 + t < k ? F::value(row_blocks, k0 + t) : 0.0f;
        }
    }
#pragma unroll
    for (int p = 0; p < MMA_STEP / 2; ++p)
        w_pairs[tid][p] = bf16_bits(values[2 * p]) | (bf16_bits(values[2 * p + 1]) << 16);
}

template <typename Weights>
__device__ void grouped_mma(const float* __restrict__ x, Weights w,
                            const int* __restrict__ row_token, const int* __restrict__ row_offsets,
                            const int* __restrict__ tile_offsets, int experts, int n, int k,
                            float* __restrict__ y) {
    // Pairs of bf16 along k, 16 per row and step; a word of padding spreads the rows over banks.
    __shared__ StepPairs x_pairs, w_pairs;

    RowTile rows;
    if (!row_tile(row_offsets, tile_offsets, experts, rows)) return;
    const int first_row = rows.first_row, end_row = rows.end_row;
    const int first_col = blockIdx.x * TILE_COLS;
    const size_t first_weight_row = (size_t)rows.expert * n;

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int g = lane / 4, t = lane % 4;
    const int warp_row = (warp / 2) * 32, warp_col = (warp % 2) * 32;
    float acc[2][4][4] = {};  // [16-row tile][8-column tile][fragment]

    for (int k0 = 0; k0 < k; k0 += MMA_STEP) {
        load_step(w, first_weight_row + first_col, n - first_col, x, row_token, first_row,
                  end_row, k0, k, x_pairs, w_pairs);
        __syncthreads();
#pragma unroll
        for (int half = 0; half < MMA_STEP / 16; ++half) {
            // A's fragment: rows g and g + 8, pairs t and t + 4 of this half; B's (W's rows as
            // columns): row g, pairs t and t + 4.
            const int q = 8 * half + t;
            unsigned int a[2][4], b[4][2];
#pragma unroll
            for (int m = 0; m < 2; ++m) {
                const int r = warp_row + 16 * m + g;
                a[m][0] = x_pairs[r][q];
                a[m][1] = x_pairs[r + 8][q];
                a[m][2] = x_pairs[r][q + 4];
                a[m][3] = x_pairs[r + 8][q + 4];
            }
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int c = warp_col + 8 * j + g;
                b[j][0] = w_pairs[c][q];
                b[j][1] = w_pairs[c][q + 4];
            }
#pragma unroll
            for (int m = 0; m < 2; ++m)
#pragma unroll
                for (int j = 0; j < 4; ++j) mma_bf16_16x8x16(acc[m][j], a[m], b[j]);
        }
        __syncthreads();
    }

    // D's fragment: rows g and g + 8, columns 2t and 2t + 1.
#pragma unroll
    for (int m = 0; m < 2; ++m)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                const int row = first_row + warp_row + 16 * m + g + 8 * (r / 2);
                const int col = first_col + warp_col + 8 * j + 2 * t + r % 2;
                if (row < end_row && col < n) y[(size_t)row * n + col] = acc[m][j][r];
            }
}

// As moe_grouped_matmul_bf16, on tensor cores.
extern "C" __global__ void __launch_bounds__(MMA_THREADS)
moe_grouped_mma_bf16(const float* __restrict__ x, const unsigned short* __restrict__ w,
                     const int* __restrict__ row_token, const int* __restrict__ row_offsets,
                     const int* __restrict__ tile_offsets, int experts, int n, int k,
                     float* __restrict__ y) {
    grouped_mma(x, w, row_token, row_offsets, tile_offsets, experts, n, k, y);
}

// The entry points for weights in GGUF blocks, three per format (the f32 tiles, the tensor-core
// tiles, the matvec), each taking its f32 or bf16 fellow's parameters with w as
// [experts, n, k / VALUES] blocks of bytes.
#define BLOCK_FORMAT_ENTRY_POINTS(name, Format)                                                 \
    extern "C" __global__ void __launch_bounds__(THREADS) moe_grouped_matmul_##name(          \
        const float* __restrict__ x, const unsigned char* __restrict__ w,                      \
        const int* __restrict__ row_token, const int* __restrict__ row_offsets,                \
        const int* __restrict__ tile_offsets, int experts, int n, int k, float* __restrict__ y) { \
        grouped_matmul(x, Blocks<Format>{w}, row_token, row_offsets, tile_offsets, experts, n,  \
                       k, y);                                                                   \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(MMA_THREADS) moe_grouped_mma_##name(         \
        const float* __restrict__ x, const unsigned char* __restrict__ w,                      \
        const int* __restrict__ row_token, const int* __restrict__ row_offsets,                \
        const int* __restrict__ tile_offsets, int experts, int n, int k, float* __restrict__ y) { \
        grouped_mma(x, Blocks<Format>{w}, row_token, row_offsets, tile_offsets, experts, n, k,  \
                    y);                                                                         \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(32 * MATVEC_WARPS) moe_expert_matvec_##name(  \
        const float* __restrict__ x, const unsigned char* __restrict__ w,                      \
        const int* __restrict__ row_token, const int* __restrict__ row_offsets, int experts,   \
        int n, int k, float* __restrict__ y) {                                                 \
        blocks_matvec(x, Blocks<Format>{w}, row_token, row_offsets, n, k, y);                  \
    }

BLOCK_FORMAT_ENTRY_POINTS(f16, F16Format)
BLOCK_FORMAT_ENTRY_POINTS(q8_0, Q8_0Format)
BLOCK_FORMAT_ENTRY_POINTS(q4_0, Q4_0Format)
BLOCK_FORMAT_ENTRY_POINTS(q5_0, Q5_0Format)
BLOCK_FORMAT_ENTRY_POINTS(q4_k, Q4KFormat)
BLOCK_FORMAT_ENTRY_POINTS(q5_k, Q5KFormat)
BLOCK_FORMAT_ENTRY_POINTS(q6_k, Q6KFormat)
