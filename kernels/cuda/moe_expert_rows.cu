// A prompt's routed tokens regrouped by expert (moe_expert_rows) and back (moe_combine), on the
// GPU so that a MoE layer never waits for the host: the routing's choices stay on the device,
// and the grouped matmul's launch is sized by the most tiles any routing can take.
//
// CPU reference: kernels::expert_rows::expert_rows and combine_expert_rows. The rows of one
// expert come in the order its threads arrive, not token order; the offsets, and each choice's
// row holding its token, are the same.

#define TILE_ROWS 64  // moe_grouped_matmul.cu's row tile

// chosen [choices] (each token's top_k experts, token after token) ->
//   row_offsets, tile_offsets [experts + 1]: expert e's rows and row tiles start there;
//   row_token [choices]: the token each row comes from;
//   choice_row [choices]: the row each choice became (-1 for an expert out of range).
// One block; dynamic shared memory 2 * experts ints.
extern "C" __global__ void moe_expert_rows(const int* __restrict__ chosen, int choices,
                                           int experts, int top_k, int* __restrict__ row_offsets,
                                           int* __restrict__ tile_offsets,
                                           int* __restrict__ row_token,
                                           int* __restrict__ choice_row) {
    extern __shared__ int shared_rows[];
    int* counts = shared_rows;
    int* cursor = shared_rows + experts;
    for (int e = threadIdx.x; e < experts; e += blockDim.x) counts[e] = 0;
    __syncthreads();
    for (int c = threadIdx.x; c < choices; c += blockDim.x) {
        const int expert = chosen[c];
        if (expert >= 0 && expert < experts) atomicAdd(&counts[expert], 1);
    }
    __syncthreads();
    // A few hundred experts at most: one thread's running sum is shorter than a parallel scan.
    if (threadIdx.x == 0) {
        int rows = 0, tiles = 0;
        for (int e = 0; e < experts; ++e) {
            row_offsets[e] = rows;
            tile_offsets[e] = tiles;
            cursor[e] = rows;
            rows += counts[e];
            tiles += (counts[e] + TILE_ROWS - 1) / TILE_ROWS;
        }
        row_offsets[experts] = rows;
        tile_offsets[experts] = tiles;
    }
    __syncthreads();
    for (int c = threadIdx.x; c < choices; c += blockDim.x) {
        const int expert = chosen[c];
        if (expert < 0 || expert >= experts) {
            choice_row[c] = -1;
            continue;
        }
        const int row = atomicAdd(&cursor[expert], 1);
        row_token[row] = c / top_k;
        choice_row[c] = row;
    }
}

// out[t, :] = base[t, :] + sum over j of weights[t * top_k + j] * rows[choice_row[t * top_k + j], :]
// with base null meaning zeros; the choices are added in their order, after base.
// Grid (tokens), block 256.
extern "C" __global__ void moe_combine(const float* __restrict__ rows,
                                       const int* __restrict__ choice_row,
                                       const float* __restrict__ weights,
                                       const float* __restrict__ base, int top_k, int width,
                                       float* __restrict__ out) {
    const size_t token = blockIdx.x;
    for (int h = threadIdx.x; h < width; h += blockDim.x) {
        float sum = base ? base[token * width + h] : 0.0f;
        for (int j = 0; j < top_k; ++j) {
            const int row = choice_row[token * top_k + j];
            if (row >= 0) sum += weights[token * top_k + j] * rows[(size_t)row * width + h];
        }
        out[token * width + h] = sum;
    }
}
