// Multi-head latent attention in its absorbed form over the paged latent cache, on the GPU.
//
// Every cached key row is [c_kv (KV_LORA) | k_pe (ROPE)] floats in a page of the pool; a page
// table lists the sequence's pages in order. For query token t (position first_position + t),
// over keys j <= that position:
//
//   s_j = scale * (q_latent . c_j + q_rope . k_pe_j),   out = sum_j softmax(s)_j * c_j
//
// Split-K: the keys are cut into splits of whole pages; one block takes one split, one token and
// HEADS_PER_BLOCK heads, so every head of the group reads each key row of the split once, from
// shared memory. It writes a partial (running max, sum of exp, weighted latent sum) that
// mla_merge_splits folds together with log-sum-exp. A span of several new tokens (a prompt's
// tail against the cached pages) is the same launch with more tokens: each sees only the keys up
// to its own position.
//
// CPU reference: kernels::paged_attention::absorbed_attention (the same split and merge).
//
// Compile-time sizes (NVRTC -D options, from the model's config): KV_LORA, ROPE,
// HEADS_PER_BLOCK (divides the heads), KEYS_PER_TILE. Launch of mla_split_partials:
// grid (splits, heads / HEADS_PER_BLOCK, tokens), block (THREADS).

#ifndef KV_LORA
#error "KV_LORA must be defined (the latent width, kv_lora_rank)"
#endif
#ifndef ROPE
#error "ROPE must be defined (qk_rope_head_dim)"
#endif
#ifndef HEADS_PER_BLOCK
#define HEADS_PER_BLOCK 16
#endif
#ifndef KEYS_PER_TILE
#define KEYS_PER_TILE 4
#endif
// NVRTC has no math.h: -inf spelled as its bits.
#define NEG_INF __int_as_float(0xff800000)
#define THREADS 256
#define WARPS (THREADS / 32)
#define ROW (KV_LORA + ROPE)
// Latent dimensions each thread accumulates, for every head of the block.
#define DIMS_PER_THREAD ((KV_LORA + THREADS - 1) / THREADS)

__device__ __forceinline__ float warp_sum(float value) {
    for (int offset = 16; offset > 0; offset /= 2)
        value += __shfl_xor_sync(0xffffffffu, value, offset);
    return value;
}

// q_latent [tokens, heads, KV_LORA], q_rope [tokens, heads, ROPE]; pool [pool_pages,
// page_tokens, ROW]; page_table [pages]. Outputs per (token, split, head): partial_max,
// partial_sum, and partial_acc [.., KV_LORA] (the latent sum weighted by exp(s - partial_max)).
// A split that sees no key writes max -inf, sum 0.
extern "C" __global__ void __launch_bounds__(THREADS)
mla_split_partials(const float* __restrict__ q_latent, const float* __restrict__ q_rope,
                   const float* __restrict__ pool, const int* __restrict__ page_table,
                   int page_tokens, int heads, int first_position, int pages_per_split,
                   float softmax_scale, float* __restrict__ partial_max,
                   float* __restrict__ partial_sum, float* __restrict__ partial_acc) {
    __shared__ float queries[HEADS_PER_BLOCK][ROW];
    __shared__ float keys[KEYS_PER_TILE][ROW];
    __shared__ float weights[HEADS_PER_BLOCK][KEYS_PER_TILE];
    __shared__ float running_max[HEADS_PER_BLOCK], running_sum[HEADS_PER_BLOCK];
    __shared__ float rescale[HEADS_PER_BLOCK];

    const int split = blockIdx.x, first_head = blockIdx.y * HEADS_PER_BLOCK, token = blockIdx.z;
    const int splits = gridDim.x;
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;

    for (int i = tid; i < HEADS_PER_BLOCK * ROW; i += THREADS) {
        const int h = i / ROW, d = i % ROW;
        const size_t query = (size_t)token * heads + first_head + h;
        queries[h][d] = d < KV_LORA ? q_latent[query * KV_LORA + d]
                                    : q_rope[query * ROPE + (d - KV_LORA)];
    }
    if (tid < HEADS_PER_BLOCK) {
        running_max[tid] = NEG_INF;
        running_sum[tid] = 0.0f;
    }
    float acc[HEADS_PER_BLOCK][DIMS_PER_THREAD];
#pragma unroll
    for (int h = 0; h < HEADS_PER_BLOCK; ++h)
#pragma unroll
        for (int i = 0; i < DIMS_PER_THREAD; ++i) acc[h][i] = 0.0f;

    // Keys this split holds that this token may see: [begin, end).
    const int visible = first_position + token + 1;
    const int begin = split * pages_per_split * page_tokens;
    const int end = min((split + 1) * pages_per_split * page_tokens, visible);
    __syncthreads();

    for (int tile = begin; tile < end; tile += KEYS_PER_TILE) {
        const int count = min(KEYS_PER_TILE, end - tile);
        for (int i = tid; i < count * ROW; i += THREADS) {
            const int j = i / ROW, d = i % ROW, key = tile + j;
            const int page = page_table[key / page_tokens];
            keys[j][d] = pool[((size_t)page * page_tokens + key % page_tokens) * ROW + d];
        }
        __syncthreads();

        // Scores: one warp per (head, key) pair at a time, lanes across the row.
        for (int pair = warp; pair < HEADS_PER_BLOCK * KEYS_PER_TILE; pair += WARPS) {
            const int h = pair / KEYS_PER_TILE, j = pair % KEYS_PER_TILE;
            float dot = 0.0f;
            if (j < count)
                for (int d = lane; d < ROW; d += 32) dot += queries[h][d] * keys[j][d];
            dot = warp_sum(dot);
            if (lane == 0) weights[h][j] = j < count ? dot * softmax_scale : NEG_INF;
        }
        __syncthreads();

        // Online softmax, one thread per head: scores become weights exp(s - new max).
        if (tid < HEADS_PER_BLOCK) {
            const int h = tid;
            float tile_max = NEG_INF;
            for (int j = 0; j < count; ++j) tile_max = fmaxf(tile_max, weights[h][j]);
            const float old_max = running_max[h], new_max = fmaxf(old_max, tile_max);
            const float factor = old_max == NEG_INF ? 0.0f : expf(old_max - new_max);
            float sum = running_sum[h] * factor;
            for (int j = 0; j < KEYS_PER_TILE; ++j) {
                const float w = j < count ? expf(weights[h][j] - new_max) : 0.0f;
                weights[h][j] = w;
                sum += w;
            }
            running_max[h] = new_max;
            running_sum[h] = sum;
            rescale[h] = factor;
        }
        __syncthreads();

#pragma unroll
        for (int i = 0; i < DIMS_PER_THREAD; ++i) {
            const int d = tid + i * THREADS;
            if (d < KV_LORA) {
#pragma unroll
                for (int h = 0; h < HEADS_PER_BLOCK; ++h) {
                    float value = acc[h][i] * rescale[h];
                    for (int j = 0; j < count; ++j) value += weights[h][j] * keys[j][d];
                    acc[h][i] = value;
                }
            }
        }
        __syncthreads();
    }

    const size_t first = ((size_t)token * splits + split) * heads + first_head;
    if (tid < HEADS_PER_BLOCK) {
        partial_max[first + tid] = running_max[tid];
        partial_sum[first + tid] = running_sum[tid];
    }
#pragma unroll
    for (int i = 0; i < DIMS_PER_THREAD; ++i) {
        const int d = tid + i * THREADS;
        if (d < KV_LORA)
#pragma unroll
            for (int h = 0; h < HEADS_PER_BLOCK; ++h)
                partial_acc[(first + h) * KV_LORA + d] = acc[h][i];
    }
}

// Folds the splits' partials: out [tokens, heads, KV_LORA] = sum_s acc_s e_s / sum_s sum_s e_s
// with e_s = exp(max_s - max over splits). Grid (heads, tokens), block (THREADS).
extern "C" __global__ void __launch_bounds__(THREADS)
mla_merge_splits(const float* __restrict__ partial_max, const float* __restrict__ partial_sum,
                 const float* __restrict__ partial_acc, int splits, float* __restrict__ out) {
    const int head = blockIdx.x, heads = gridDim.x, token = blockIdx.y;
    float max = NEG_INF;
    for (int s = 0; s < splits; ++s)
        max = fmaxf(max, partial_max[((size_t)token * splits + s) * heads + head]);
    float total = 0.0f;
    for (int s = 0; s < splits; ++s) {
        const size_t at = ((size_t)token * splits + s) * heads + head;
        if (partial_max[at] != NEG_INF) total += partial_sum[at] * expf(partial_max[at] - max);
    }
    for (int d = threadIdx.x; d < KV_LORA; d += THREADS) {
        float value = 0.0f;
        for (int s = 0; s < splits; ++s) {
            const size_t at = ((size_t)token * splits + s) * heads + head;
            if (partial_max[at] != NEG_INF)
                value += partial_acc[at * KV_LORA + d] * expf(partial_max[at] - max);
        }
        out[((size_t)token * heads + head) * KV_LORA + d] = value / total;
    }
}
