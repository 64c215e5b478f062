"""transformers' logits for the weights a GGUF file holds: every tensor dequantized by gguf-py
(llama.cpp's own Python reference of its formats) and put back under its Hugging Face name,
then the model of MODEL_DIR run on the input ids of MODEL_DIR/reference.safetensors.

    python dequantized_reference.py LLAMA_CPP_DIR MODEL_DIR FILE.gguf OUT.safetensors

OUT holds `input_ids` [T] and `logits` [T, vocab] (f32, eager attention), so the engine's
quantized forward pass is checked against torch on the very same weights, with the tolerance of
the f32 tests; the gap to the unquantized logits is printed for the record.

The model is also read as llama.cpp reads the file: YaRN's mscale is taken to equal
mscale_all_dim (the only one GGUF keeps), which changes nothing where they are equal already.
"""

import re
import sys

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import DeepseekV2Config, DeepseekV2ForCausalLM

# Hugging Face module name -> llama.cpp tensor name, per layer (the converter's own mapping,
# written the other way round).
LAYER_NAMES = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.q_a_proj": "attn_q_a",
    "self_attn.q_a_layernorm": "attn_q_a_norm",
    "self_attn.q_b_proj": "attn_q_b",
    "self_attn.kv_a_proj_with_mqa": "attn_kv_a_mqa",
    "self_attn.kv_a_layernorm": "attn_kv_a_norm",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "mlp.gate": "ffn_gate_inp",
    "mlp.shared_experts.gate_proj": "ffn_gate_shexp",
    "mlp.shared_experts.up_proj": "ffn_up_shexp",
    "mlp.shared_experts.down_proj": "ffn_down_shexp",
}


def main() -> None:
    llama_dir, model_dir, gguf_path, out_path = sys.argv[1:5]
    sys.path.insert(0, f"{llama_dir}/gguf-py")
    import gguf

    reader = gguf.GGUFReader(gguf_path)
    stored = {
        t.name: gguf.quants.dequantize(t.data, t.tensor_type).reshape(
            [int(d) for d in reversed(t.shape)]
        )
        for t in reader.tensors
    }

    def weight(name: str) -> np.ndarray:
        if name == "model.embed_tokens.weight":
            return stored["token_embd.weight"]
        if name == "model.norm.weight":
            return stored["output_norm.weight"]
        if name == "lm_head.weight":
            return stored.get("output.weight", stored["token_embd.weight"])
        # transformers 5 keeps each layer's experts stacked: [experts, 2 * n_ff, hidden] with
        # gate rows over up rows, and [experts, hidden, n_ff].
        stacked = re.fullmatch(r"model\.layers\.(\d+)\.mlp\.experts\.(gate_up_proj|down_proj)", name)
        if stacked:
            blk = f"blk.{stacked.group(1)}"
            if stacked.group(2) == "down_proj":
                return stored[f"{blk}.ffn_down_exps.weight"]
            gate, up = stored[f"{blk}.ffn_gate_exps.weight"], stored[f"{blk}.ffn_up_exps.weight"]
            return np.concatenate([gate, up], axis=1)
        layer, part, kind = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)", name).groups()
        blk = f"blk.{layer}"
        if part == "self_attn.kv_b_proj" and f"{blk}.attn_kv_b.weight" not in stored:
            k_b = stored[f"{blk}.attn_k_b.weight"]  # [heads, kv_lora, nope]
            v_b = stored[f"{blk}.attn_v_b.weight"]  # [heads, v, kv_lora]
            kv_b = np.concatenate([k_b.transpose(0, 2, 1), v_b], axis=1)
            return kv_b.reshape(-1, kv_b.shape[-1])
        if part == "self_attn.kv_b_proj":
            return stored[f"{blk}.attn_kv_b.weight"]
        return stored[f"{blk}.{LAYER_NAMES[part]}.{kind}"]

    config = DeepseekV2Config.from_pretrained(model_dir)
    rope = config.rope_parameters
    if rope.get("mscale_all_dim") is not None and rope.get("mscale") != rope["mscale_all_dim"]:
        print(f"mscale {rope.get('mscale')} -> {rope['mscale_all_dim']}, as llama.cpp reads the file")
        rope["mscale"] = rope["mscale_all_dim"]
    model = DeepseekV2ForCausalLM.from_pretrained(
        model_dir, config=config, dtype=torch.float32, attn_implementation="eager",
        experts_implementation="eager",
    ).eval()
    state = {name: torch.from_numpy(np.array(weight(name), dtype=np.float32))
             for name in model.state_dict()}
    model.load_state_dict(state, strict=True)

    reference = load_file(f"{model_dir}/reference.safetensors")
    input_ids = reference["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=input_ids[None]).logits[0].float()
    gap = (logits - reference["logits"]).abs().max().item()
    print(f"{gguf_path}: max |logits - unquantized logits| = {gap:.3e}, "
          f"largest logit {reference['logits'].abs().max().item():.3f}")
    save_file({"input_ids": input_ids.contiguous(), "logits": logits.contiguous()}, out_path)


if __name__ == "__main__":
    main()
