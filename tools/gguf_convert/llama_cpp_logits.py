"""llama.cpp's own logits for a GGUF file: the fixture's input ids evaluated by llama.cpp
(through llama-cpp-python 0.3.36, which builds it from source), every position kept.

    python llama_cpp_logits.py FILE.gguf IDS.safetensors OUT.safetensors

IDS holds `input_ids` (the lite fixture's reference.safetensors). OUT holds `input_ids` [T] and
`logits` [T, vocab] (f32). The KV cache is kept in f32 and the batch is the whole prompt, so
the only roundings are llama.cpp's matmuls: Q8_0 weights meet inputs rounded to Q8_0, as ours
do. Run on the CPU, 2 threads, no GPU build.
"""

import sys

import numpy as np
from llama_cpp import GGML_TYPE_F32, Llama
from safetensors.numpy import load_file, save_file


def main() -> None:
    gguf_path, ids_path, out_path = sys.argv[1:4]
    ids = [int(i) for i in load_file(ids_path)["input_ids"]]
    model = Llama(
        model_path=gguf_path,
        n_ctx=max(64, len(ids)),
        n_batch=len(ids),
        n_ubatch=len(ids),
        n_threads=2,
        logits_all=True,
        type_k=GGML_TYPE_F32,
        type_v=GGML_TYPE_F32,
        verbose=False,
        # llama.cpp takes a deepseek2 file without q_lora_rank for V2-Lite only when it has
        # Lite's 26 or 27 layers; our small fixtures say "no q LoRA" the way it reads it.
        kv_overrides={"deepseek2.attention.q_lora_rank": 0},
    )
    model.eval(ids)
    logits = np.asarray(model.scores[: len(ids)], dtype=np.float32)
    save_file(
        {"input_ids": np.asarray(ids, dtype=np.int64), "logits": logits},
        out_path,
    )
    print(f"{out_path}: {logits.shape[0]} positions x {logits.shape[1]} logits")


if __name__ == "__main__":
    main()
