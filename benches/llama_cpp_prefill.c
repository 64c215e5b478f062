// llama.cpp's prefill on a GGUF file, measured as benches/llama_cpp_peer.py measures it, for a
// machine without Python or a compiler (the AMX run of tools/amx_check.sh): the same prompt
// token ids as deepseek-lsp's bench ((i * 7919 + 13) mod the vocabulary), one llama_decode of
// the whole prompt on an empty context, flash attention off, the fastest of R runs.
//
//   llama_cpp_prefill FILE.gguf PROMPT THREADS REPEATS
//
// prints one JSON object: {"prefill_tokens_per_second": ..., "prefill_seconds": ..., ...}.
// Built by `tools/amx_check.sh build` against the llama.cpp that llama-cpp-python 0.3.36 builds
// (its headers and libraries, carried next to this binary).

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "llama.h"

static double seconds_now(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + (double)now.tv_nsec * 1e-9;
}

// Keeps llama.cpp's own log quiet: the output is one JSON object.
static void quiet(enum ggml_log_level level, const char* text, void* data) {
    (void)data;
    if (level == GGML_LOG_LEVEL_ERROR) fputs(text, stderr);
}

int main(int argc, char** argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s FILE.gguf PROMPT THREADS REPEATS\n", argv[0]);
        return 2;
    }
    const char* path = argv[1];
    const int prompt = atoi(argv[2]), threads = atoi(argv[3]), repeats = atoi(argv[4]);
    if (prompt <= 0 || threads <= 0 || repeats <= 0) {
        fprintf(stderr, "PROMPT, THREADS and REPEATS must be positive\n");
        return 2;
    }
    llama_log_set(quiet, NULL);
    llama_backend_init();

    double started = seconds_now();
    struct llama_model* model = llama_model_load_from_file(path, llama_model_default_params());
    if (!model) {
        fprintf(stderr, "llama.cpp could not load %s\n", path);
        return 1;
    }
    struct llama_context_params params = llama_context_default_params();
    params.n_ctx = (uint32_t)prompt + 16;
    // The whole prompt in one llama_decode call; llama.cpp splits it into its own ubatches.
    params.n_batch = prompt > 512 ? (uint32_t)prompt : 512;
    params.n_threads = threads;
    params.n_threads_batch = threads;
    params.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    struct llama_context* context = llama_init_from_model(model, params);
    if (!context) {
        fprintf(stderr, "llama.cpp could not make a context for %s\n", path);
        return 1;
    }
    const double load_seconds = seconds_now() - started;

    const int vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    llama_token* ids = malloc(sizeof(llama_token) * (size_t)prompt);
    if (!ids) return 1;
    for (int i = 0; i < prompt; ++i) ids[i] = (llama_token)(((long long)i * 7919 + 13) % vocab);

    double best = INFINITY;
    for (int run = 0; run < repeats; ++run) {
        llama_memory_clear(llama_get_memory(context), true);
        started = seconds_now();
        if (llama_decode(context, llama_batch_get_one(ids, prompt)) != 0) {
            fprintf(stderr, "llama_decode failed\n");
            return 1;
        }
        const double took = seconds_now() - started;
        if (took < best) best = took;
    }
    printf("{\"prefill_tokens_per_second\": %.4f, \"prefill_seconds\": %.6f, \"prompt\": %d, "
           "\"threads\": %d, \"repeats\": %d, \"load_seconds\": %.3f, \"n_vocab\": %d, "
           "\"system_info\": \"%s\"}\n",
           prompt / best, best, prompt, threads, repeats, load_seconds, vocab,
           llama_print_system_info());
    free(ids);
    llama_free(context);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
