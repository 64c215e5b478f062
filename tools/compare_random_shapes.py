#!/usr/bin/env python3
"""Checks `deepseek-lsp logits` against transformers on random DeepSeek-V2 shapes.

For each case a random config (dimensions, q LoRA or not, greedy or group-limited routing, YaRN
parameters, tied embeddings, biases, on-disk dtype, sharding) is saved with transformers'
`save_pretrained`, and the logits transformers computes for random ids are compared with what the
binary prints, for a full forward and for `--prefix N` (cached prefix, then token-by-token decode).

Usage:  python tools/compare_random_shapes.py [--cases 12] [--seed 0] [--binary target/release/deepseek-lsp]
Prints one line per case and exits 1 if any error exceeds the tolerance.
"""

import argparse
import copy
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from transformers import DeepseekV2Config, DeepseekV2ForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_golden import init_weights, round_to  # noqa: E402

TOLERANCE = 1e-4


def random_config(rng: random.Random) -> tuple[dict, torch.dtype]:
    heads = rng.randint(1, 6)
    experts = rng.choice([4, 6, 8, 12, 16])
    group_limited = rng.random() < 0.5
    config = dict(
        vocab_size=rng.randint(100, 700),
        hidden_size=heads * rng.randint(4, 16),
        intermediate_size=rng.randint(16, 128),
        moe_intermediate_size=rng.randint(4, 40),
        num_hidden_layers=rng.randint(1, 4),
        num_attention_heads=heads,
        q_lora_rank=rng.choice([None, rng.randint(4, 40)]),
        kv_lora_rank=2 * rng.randint(2, 24),
        qk_nope_head_dim=2 * rng.randint(1, 12),  # transformers needs even head widths (view_as_complex)
        qk_rope_head_dim=2 * rng.randint(1, 12),
        v_head_dim=rng.randint(2, 24),
        n_routed_experts=experts,
        n_shared_experts=rng.choice([1, 2, 3]),
        first_k_dense_replace=rng.randint(0, 2),
        routed_scaling_factor=rng.choice([1.0, 2.5, 16.0]),
        tie_word_embeddings=rng.random() < 0.3,
        attention_bias=rng.random() < 0.3,
        mlp_bias=rng.random() < 0.3,
        rms_norm_eps=rng.choice([1e-6, 1e-5]),
        max_position_embeddings=512,
        hidden_act="silu",
    )
    if group_limited:
        n_group = rng.choice([g for g in (2, 3, 4) if experts % g == 0])
        topk_group = rng.randint(1, n_group - 1)
        per_group = experts // n_group
        config.update(topk_method="group_limited_greedy", n_group=n_group, topk_group=topk_group,
                      num_experts_per_tok=rng.randint(1, topk_group * per_group))
    else:
        config.update(topk_method="greedy", num_experts_per_tok=rng.randint(1, experts))
    if rng.random() < 0.8:
        rope = dict(rope_type="yarn", rope_theta=rng.choice([10000.0, 500.0, 1e6]),
                    factor=rng.choice([2.0, 4.0, 40.0]), original_max_position_embeddings=rng.choice([8, 16, 64]),
                    beta_fast=rng.choice([32, 16]), beta_slow=rng.choice([1, 2]))
        mscale = rng.choice([(0.707, 0.707), (1.0, 0.5), (None, None), (1.0, None)])
        if mscale[0] is not None:
            rope["mscale"] = mscale[0]
        if mscale[1] is not None:
            rope["mscale_all_dim"] = mscale[1]
    else:
        rope = dict(rope_type="default", rope_theta=rng.choice([10000.0, 500.0]))
    config["rope_parameters"] = rope
    return config, rng.choice([torch.float32, torch.float16, torch.bfloat16])


def run_case(index: int, rng: random.Random, binary: str, workdir: Path) -> float:
    config_kwargs, save_dtype = random_config(rng)
    config = DeepseekV2Config(**config_kwargs)
    config._attn_implementation = "eager"
    config._experts_implementation = "eager"
    model = DeepseekV2ForCausalLM(config).eval()
    init_weights(model, seed=1000 + index)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    round_to(model, save_dtype)
    directory = workdir / f"case{index}"
    shard = {"max_shard_size": "50KB"} if rng.random() < 0.3 else {}
    copy.deepcopy(model).to(save_dtype).save_pretrained(directory, **shard)
    reloaded = DeepseekV2ForCausalLM.from_pretrained(directory, dtype=torch.float32, attn_implementation="eager",
                                                    experts_implementation="eager").eval()

    length = rng.randint(2, 60)
    ids = [rng.randrange(config.vocab_size) for _ in range(length)]
    with torch.no_grad():
        reference = reloaded(input_ids=torch.tensor([ids])).logits[0].float()
        # The same model in f64: how far f32 rounding alone moves transformers' own logits.
        exact = reloaded.double()(input_ids=torch.tensor([ids])).logits[0]
    noise = (reference.double() - exact).abs().max().item()

    errors = []
    prefix = rng.randint(0, length)
    for extra in ([], ["--prefix", str(prefix)]):
        out = subprocess.run([binary, "logits", "--model", str(directory), "--ids", ",".join(map(str, ids)), *extra],
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"case {index}: {out.stderr.strip()}")
        ours = torch.tensor(json.loads(out.stdout)["logits"])
        errors.append((ours - reference).abs().max().item())
        ours_vs_exact = (ours.double() - exact).abs().max().item()
    # f32 rounding grows with the logits' size: compare relative to the largest logit, floor 1.
    scale = max(1.0, reference.abs().max().item())
    worst = max(errors) / scale
    shape = {k: config_kwargs[k] for k in ("hidden_size", "num_attention_heads", "q_lora_rank", "kv_lora_rank",
                                            "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "num_hidden_layers",
                                            "n_routed_experts", "num_experts_per_tok", "topk_method")}
    print(f"case {index:2d}: error/scale {worst:.2e} (full {errors[0]:.2e}, prefix {errors[1]:.2e}, "
          f"max |logit| {scale:.1f}; vs f64: ours {ours_vs_exact:.1e} transformers {noise:.1e})  len {length:2d} prefix {prefix:2d} "
          f"{str(save_dtype)[6:]:8s} rope {config_kwargs['rope_parameters']['rope_type']:7s} {shape}", flush=True)
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--binary", default="target/release/deepseek-lsp")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    torch.set_grad_enabled(False)
    with tempfile.TemporaryDirectory() as tmp:
        errors = [run_case(i, rng, args.binary, Path(tmp)) for i in range(args.cases)]
    print(f"worst over {len(errors)} cases: {max(errors):.2e} (tolerance {TOLERANCE:.0e})")
    sys.exit(0 if max(errors) <= TOLERANCE else 1)


if __name__ == "__main__":
    main()
