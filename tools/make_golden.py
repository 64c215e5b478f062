#!/usr/bin/env python3
"""Builds tiny random DeepSeek-V2 checkpoints and the logits transformers computes for them.

Each fixture is a Hugging Face model directory (config.json + safetensors, and for `lite` and `v2`
a byte-level tokenizer.json with DeepSeek's special strings plus `generation.json`: greedy FIM and
chat generations with their prompt ids) plus `reference.safetensors` holding:
  input_ids    [T]        int64   the token ids run through the model
  logits       [T, vocab] float32 transformers' logits at every position (eager attention, f32)
  greedy_ids   [P + G]    int64   a prompt of P ids followed by G ids transformers' greedy generate chose
  prompt_len   [1]        int64   P

Usage:  python tools/make_golden.py [OUT_DIR]      (default: engine/tests/fixtures)
Needs:  pip install -r tools/requirements.txt       (torch + transformers >= 5.24)

Weights use a deliberately non-default init (N(0, 1/fan_in) matrices, N(0, 1) embeddings, norms
near 1, a peaked router) so that a wrong scale, a swapped layout or a mis-routed token moves the
logits by far more than float rounding.

transformers 5.24 always multiplies routing weights by routed_scaling_factor (it ignores
norm_topk_prob) and makes every layer past first_k_dense_replace a MoE layer (it ignores
moe_layer_freq). The `branches` fixture patches the reference model to follow DeepSeek's own rules
(renormalise when norm_topk_prob; MoE only where layer % moe_layer_freq == 0) so that those branches
are checked against torch too.
"""

import copy
import json
import math
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import DeepseekV2Config, DeepseekV2ForCausalLM
from transformers.models.deepseek_v2 import modeling_deepseek_v2 as ds

BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
FIM_HOLE, FIM_BEGIN, FIM_END = "<｜fim▁hole｜>", "<｜fim▁begin｜>", "<｜fim▁end｜>"

# A small code corpus for the fixtures' tokenizers (byte-level BPE, DeepSeek's special strings).
CORPUS = [
    "def add(a, b):\n    return a + b\n\n\nprint(add(1, 2))\n",
    "fn main() {\n    let total: i32 = (1..10).sum();\n    println!(\"{total}\");\n}\n",
    "for i in range(10):\n    if i % 2 == 0:\n        print(i)\n",
    "import os\n\nclass Config:\n    def __init__(self, path):\n        self.path = path\n",
    "// Übersicht: café, naïve, 東京, 😀 and ∑ appear in comments too\n",
]
FIM_PREFIX = "def add(a, b):\n    "
FIM_SUFFIX = "\n\nprint(add(1, 2))\n"
CHAT_SYSTEM = "You are a helpful assistant."
CHAT_USER = "Explain: total = sum(range(10))"
GENERATED_TOKENS = 16

SEQ_LEN = 40
PROMPT_LEN = 8
GREEDY_TOKENS = 12


def init_weights(model: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator, dtype=torch.float32)
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * noise)
            elif name.endswith(".bias"):
                p.copy_(0.1 * noise)
            elif "embed_tokens" in name:
                p.copy_(noise)
            elif name.endswith("mlp.gate.weight"):
                # A peaked router: routing decisions far from ties.
                p.copy_(noise * 4.0 / math.sqrt(p.shape[-1]))
            else:
                p.copy_(noise / math.sqrt(p.shape[-1]))


def round_to(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Rounds every weight to `dtype` and back, so the f32 reference uses the stored values."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(dtype).to(torch.float32))


def deepseek_router_forward(self, hidden_states):
    """DeepseekV2TopkRouter.forward with DeepSeek's norm_topk_prob rule (renormalise, no scaling)."""
    hidden_states = hidden_states.view(-1, self.hidden_dim)
    router_logits = torch.nn.functional.linear(hidden_states.float(), self.weight.float())
    scores = router_logits.softmax(dim=-1, dtype=torch.float32)
    assert self.topk_method == "greedy"
    topk_weights, topk_indices = torch.topk(scores, k=self.top_k, dim=-1, sorted=False)
    if self.top_k > 1 and self.norm_topk_prob:
        topk_weights = topk_weights / (topk_weights.sum(dim=-1, keepdim=True) + 1e-20)
    else:
        topk_weights = topk_weights * self.routed_scaling_factor
    return router_logits, topk_weights, topk_indices


def greedy_generate(model, prompt: torch.Tensor, tokens: int, name: str) -> tuple[torch.Tensor, float]:
    """`prompt` [1, P] followed by exactly `tokens` greedy tokens, and the smallest gap between the
    best and second-best logit over those choices; stops when a choice hinges on float rounding."""
    with torch.no_grad():
        generated = model.generate(
            prompt,
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=None,
        )
        top2 = model(input_ids=generated).logits[0, prompt.shape[1] - 1 : -1].topk(2, dim=-1).values
    margin = (top2[..., 0] - top2[..., 1]).min().item()
    if margin < 1e-3:
        raise SystemExit(f"{name}: greedy margin {margin:.2e} is too small; change the seed or the sample")
    return generated, margin


def reference(model, vocab: int, seed: int, name: str) -> dict:
    generator = torch.Generator().manual_seed(seed + 1)
    input_ids = torch.randint(0, vocab, (1, SEQ_LEN), generator=generator)
    with torch.no_grad():
        logits = model(input_ids=input_ids).logits[0].float()
    generated, _ = greedy_generate(model, input_ids[:, :PROMPT_LEN], GREEDY_TOKENS, name)
    return {
        "input_ids": input_ids[0].contiguous(),
        "logits": logits.contiguous(),
        "greedy_ids": generated[0].contiguous(),
        "prompt_len": torch.tensor([PROMPT_LEN], dtype=torch.int64),
    }


def make_tokenizer(vocab_size: int) -> Tokenizer:
    """A byte-level BPE of exactly `vocab_size` entries whose special tokens have DeepSeek's strings
    (and, unlike DeepSeek's, ids 0-4: code must find them by string)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS, FIM_HOLE, FIM_BEGIN, FIM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS, trainer=trainer)
    assert tokenizer.get_vocab_size() == vocab_size, tokenizer.get_vocab_size()
    return tokenizer


def generation_reference(model, tokenizer: Tokenizer) -> dict:
    """Greedy generations for a FIM and a chat prompt, with the prompts encoded the way DeepSeek's
    own tooling does (one string, special tokens split out by the tokenizer)."""
    eos = tokenizer.token_to_id(EOS)
    cases = {
        "fim": {"prefix": FIM_PREFIX, "suffix": FIM_SUFFIX,
                "text": BOS + FIM_BEGIN + FIM_PREFIX + FIM_HOLE + FIM_SUFFIX + FIM_END},
        "chat": {"system": CHAT_SYSTEM, "user": CHAT_USER,
                 "text": BOS + CHAT_SYSTEM + "\n\n" + "User: " + CHAT_USER + "\n\n" + "Assistant:"},
    }
    out = {}
    for name, case in cases.items():
        prompt_ids = tokenizer.encode(case.pop("text")).ids
        with torch.no_grad():
            generated = model.generate(torch.tensor([prompt_ids]), max_new_tokens=GENERATED_TOKENS,
                                       do_sample=False, pad_token_id=eos, eos_token_id=eos)
        output_ids = [t for t in generated[0, len(prompt_ids):].tolist() if t != eos]
        out[name] = dict(case, prompt_ids=prompt_ids, output_ids=output_ids,
                         output_text=tokenizer.decode(output_ids, skip_special_tokens=True),
                         ended_with_eos=generated[0, -1].item() == eos)
    return out


def write_hub_style_config(directory: Path) -> None:
    """Rewrites config.json the way hub checkpoints spell RoPE (rope_theta + rope_scaling.type)."""
    path = directory / "config.json"
    config = json.loads(path.read_text())
    rope = config.pop("rope_parameters")
    config["rope_theta"] = rope.pop("rope_theta")
    rope_type = rope.pop("rope_type")
    config["rope_scaling"] = None if rope_type == "default" else {"type": rope_type, **rope}
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def build(name: str, out: Path, seed: int, config_kwargs: dict, *, save_dtype, shard_size=None,
          hub_style=False, moe_layer_freq=None, with_tokenizer=False) -> None:
    """`moe_layer_freq` set: follow DeepSeek's rules (MoE layer spacing, norm_topk_prob)."""
    deepseek_rules = moe_layer_freq is not None
    torch.manual_seed(seed)
    config = DeepseekV2Config(**config_kwargs)
    config._attn_implementation = "eager"
    config._experts_implementation = "eager"
    model = DeepseekV2ForCausalLM(config).eval()
    if deepseek_rules:
        first = config_kwargs["first_k_dense_replace"]
        for i, layer in enumerate(model.model.layers):
            if not (i >= first and i % moe_layer_freq == 0):
                layer.mlp = ds.DeepseekV2MLP(config)
            else:
                layer.mlp.gate.norm_topk_prob = config.norm_topk_prob
    init_weights(model, seed)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    round_to(model, save_dtype)

    directory = out / name
    shutil.rmtree(directory, ignore_errors=True)
    save_args = {"max_shard_size": shard_size} if shard_size else {}
    # Save a copy: casting the model itself would also round its RoPE frequency buffers.
    copy.deepcopy(model).to(save_dtype).save_pretrained(directory, **save_args)
    if deepseek_rules:
        # transformers' config cannot express these; keep DeepSeek's keys in config.json.
        path = directory / "config.json"
        saved = json.loads(path.read_text())
        saved["moe_layer_freq"] = moe_layer_freq
        saved["norm_topk_prob"] = True
        path.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
    if hub_style:
        write_hub_style_config(directory)
    (directory / "generation_config.json").unlink(missing_ok=True)

    if deepseek_rules:
        original = ds.DeepseekV2TopkRouter.forward
        ds.DeepseekV2TopkRouter.forward = deepseek_router_forward
        try:
            ref = reference(model, config.vocab_size, seed, name)
        finally:
            ds.DeepseekV2TopkRouter.forward = original
    else:
        # The reference is what transformers computes for the directory as written.
        reloaded = DeepseekV2ForCausalLM.from_pretrained(directory, dtype=torch.float32, attn_implementation="eager",
            experts_implementation="eager").eval()
        ref = reference(reloaded, config.vocab_size, seed, name)
        if with_tokenizer:
            tokenizer = make_tokenizer(config.vocab_size)
            tokenizer.save(str(directory / "tokenizer.json"))
            generations = generation_reference(reloaded, tokenizer)
            (directory / "generation.json").write_text(json.dumps(generations, indent=2, ensure_ascii=False) + "\n")
    save_file(ref, str(directory / "reference.safetensors"))
    files = sorted(p.name for p in directory.iterdir())
    print(f"{name}: {files}")


COMMON = dict(hidden_act="silu", rms_norm_eps=1e-6, attention_dropout=0.0, bos_token_id=1, eos_token_id=2)

FIXTURES = {
    # DeepSeek-V2-Lite's shape in miniature: no q LoRA, greedy routing over all experts, YaRN with
    # mscale == mscale_all_dim (cos/sin unscaled, softmax scale changed). Hub-style config.
    "lite": dict(
        seed=1,
        save_dtype=torch.float32,
        hub_style=True,
        with_tokenizer=True,
        config=dict(
            vocab_size=320, hidden_size=64, intermediate_size=96, moe_intermediate_size=24,
            num_hidden_layers=3, num_attention_heads=4, q_lora_rank=None, kv_lora_rank=32,
            qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=12, n_routed_experts=8,
            n_shared_experts=2, num_experts_per_tok=2, first_k_dense_replace=1, topk_method="greedy",
            routed_scaling_factor=1.0, norm_topk_prob=False, max_position_embeddings=128,
            rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=8.0,
                                 original_max_position_embeddings=16, beta_fast=32, beta_slow=1,
                                 mscale=0.707, mscale_all_dim=0.707),
            **COMMON,
        ),
    ),
    # DeepSeek-V2 (236B)'s shape in miniature: q LoRA, group-limited routing with
    # n_group > topk_group, routed_scaling_factor != 1, YaRN with mscale != mscale_all_dim
    # (so cos/sin are scaled too). f16 weights in several shards; transformers-5 config.
    "v2": dict(
        seed=2,
        save_dtype=torch.float16,
        with_tokenizer=True,
        shard_size="60KB",
        config=dict(
            vocab_size=288, hidden_size=48, intermediate_size=80, moe_intermediate_size=20,
            num_hidden_layers=3, num_attention_heads=3, q_lora_rank=24, kv_lora_rank=20,
            qk_nope_head_dim=12, qk_rope_head_dim=16, v_head_dim=10, n_routed_experts=16,
            n_shared_experts=1, num_experts_per_tok=3, first_k_dense_replace=1,
            topk_method="group_limited_greedy", n_group=4, topk_group=2,
            routed_scaling_factor=2.5, norm_topk_prob=False, max_position_embeddings=256,
            rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=16.0,
                                 original_max_position_embeddings=16, beta_fast=32, beta_slow=1,
                                 mscale=1.0, mscale_all_dim=0.5),
            # Block norms use this eps; q_a/kv_a_layernorm keep RMSNorm's default 1e-6.
            **dict(COMMON, rms_norm_eps=1e-5),
        ),
    ),
    # The branches transformers does not implement (norm_topk_prob, moe_layer_freq > 1), with
    # tied embeddings, attention and MLP biases, plain RoPE and bf16 weights.
    "branches": dict(
        seed=3,
        save_dtype=torch.bfloat16,
        moe_layer_freq=2,
        config=dict(
            vocab_size=256, hidden_size=40, intermediate_size=72, moe_intermediate_size=16,
            num_hidden_layers=4, num_attention_heads=2, q_lora_rank=16, kv_lora_rank=24,
            qk_nope_head_dim=8, qk_rope_head_dim=6, v_head_dim=14, n_routed_experts=6,
            n_shared_experts=2, num_experts_per_tok=2, first_k_dense_replace=1,
            topk_method="greedy", routed_scaling_factor=3.0, norm_topk_prob=True,
            tie_word_embeddings=True, attention_bias=True, mlp_bias=True,
            max_position_embeddings=64,
            rope_parameters=dict(rope_type="default", rope_theta=500.0),
            **COMMON,
        ),
    ),
}


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "engine/tests/fixtures"
    out.mkdir(parents=True, exist_ok=True)
    torch.set_grad_enabled(False)
    for name, spec in FIXTURES.items():
        build(
            name, out, spec["seed"], spec["config"],
            save_dtype=spec["save_dtype"], shard_size=spec.get("shard_size"),
            hub_style=spec.get("hub_style", False), moe_layer_freq=spec.get("moe_layer_freq"),
            with_tokenizer=spec.get("with_tokenizer", False),
        )


if __name__ == "__main__":
    main()
