// Mixture-of-experts routing on the GPU: softmax over the router's logits, then greedy or
// group-limited top-k, then DeepSeek-V2's weighting. One warp per token.
//
// CPU reference: kernels::routing::route_token (softmax, then select_experts). The order of the
// chosen experts and the tie rule match it: best first, ties to the lower expert index (and to
// the lower group index when groups are ranked).
//
// Launch: grid (ceil(tokens / WARPS_PER_BLOCK)), block (32 * WARPS_PER_BLOCK), dynamic shared
// memory WARPS_PER_BLOCK * experts * sizeof(float).

// NVRTC has no math.h: -inf spelled as its bits.
#define NEG_INF __int_as_float(0xff800000)
#define WARPS_PER_BLOCK 4

// The better of two (score, index) pairs: the higher score, or the lower index on a tie.
__device__ __forceinline__ void keep_better(float& score, int& index, float other_score,
                                            int other_index) {
    if (other_score > score || (other_score == score && other_index < index && other_index >= 0)) {
        score = other_score;
        index = other_index;
    }
}

// The warp's best (score, index); every lane returns it. Index -1 (score -inf) when none.
__device__ __forceinline__ void warp_best(float& score, int& index) {
    for (int offset = 16; offset > 0; offset /= 2) {
        float other_score = __shfl_xor_sync(0xffffffffu, score, offset);
        int other_index = __shfl_xor_sync(0xffffffffu, index, offset);
        keep_better(score, index, other_score, other_index);
    }
}

__device__ __forceinline__ float warp_max(float value) {
    for (int offset = 16; offset > 0; offset /= 2)
        value = fmaxf(value, __shfl_xor_sync(0xffffffffu, value, offset));
    return value;
}

__device__ __forceinline__ float warp_sum(float value) {
    for (int offset = 16; offset > 0; offset /= 2)
        value += __shfl_xor_sync(0xffffffffu, value, offset);
    return value;
}

// logits [tokens, experts] -> chosen_experts, chosen_weights [tokens, top_k], best first.
// groups == 1 means no group limit; otherwise experts split into `groups` equal runs of
// consecutive experts, a group scores its best expert, and only the best `keep_groups` groups
// may be chosen. normalize != 0: weights renormalised to sum to one (+1e-20 as the reference);
// else multiplied by `scaling` (routed_scaling_factor).
extern "C" __global__ void moe_route(const float* __restrict__ logits, int tokens, int experts,
                                     int top_k, int groups, int keep_groups, int normalize,
                                     float scaling, int* __restrict__ chosen_experts,
                                     float* __restrict__ chosen_weights) {
    extern __shared__ float shared_probs[];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int token = blockIdx.x * WARPS_PER_BLOCK + warp;
    if (token >= tokens) return;
    float* probs = shared_probs + warp * experts;
    const float* row = logits + (size_t)token * experts;

    // Softmax, as the reference: exp(x - max) / sum.
    float local_max = NEG_INF;
    for (int e = lane; e < experts; e += 32) local_max = fmaxf(local_max, row[e]);
    const float max = warp_max(local_max);
    float local_sum = 0.0f;
    for (int e = lane; e < experts; e += 32) {
        float value = expf(row[e] - max);
        probs[e] = value;
        local_sum += value;
    }
    const float sum = warp_sum(local_sum);
    for (int e = lane; e < experts; e += 32) probs[e] /= sum;
    __syncwarp();

    // Group limit: rank the groups by their best expert, keep the best `keep_groups` (a bit
    // mask: groups <= 64 is checked by the launcher).
    const int per_group = experts / groups;
    unsigned long long kept = ~0ull;
    if (groups > 1) {
        kept = 0ull;
        for (int round = 0; round < keep_groups; ++round) {
            float best = NEG_INF;
            int best_group = -1;
            for (int g = lane; g < groups; g += 32) {
                if (kept & (1ull << g)) continue;
                float group_score = NEG_INF;
                for (int e = g * per_group; e < (g + 1) * per_group; ++e)
                    group_score = fmaxf(group_score, probs[e]);
                keep_better(best, best_group, group_score, g);
            }
            warp_best(best, best_group);
            if (best_group >= 0) kept |= 1ull << best_group;
        }
    }

    // Greedy top-k among the kept groups' experts. A chosen expert's probability is kept by the
    // lane that will write it, then marked -inf in shared memory so no later round takes it.
    float weight_sum = 0.0f;
    float my_weight = 0.0f;
    int my_expert = -1;
    for (int k = 0; k < top_k; ++k) {
        float best = NEG_INF;
        int best_expert = -1;
        for (int e = lane; e < experts; e += 32) {
            if (kept & (1ull << (e / per_group))) keep_better(best, best_expert, probs[e], e);
        }
        warp_best(best, best_expert);
        const float chosen = best_expert >= 0 ? best : 0.0f;
        if (lane == k) {
            my_expert = best_expert;
            my_weight = chosen;
        }
        weight_sum += chosen;
        __syncwarp();
        if (lane == 0 && best_expert >= 0) probs[best_expert] = NEG_INF;
        __syncwarp();
    }
    if (lane < top_k) {
        float weight = normalize ? my_weight / (weight_sum + 1e-20f) : my_weight * scaling;
        chosen_experts[(size_t)token * top_k + lane] = my_expert;
        chosen_weights[(size_t)token * top_k + lane] = weight;
    }
}
