"""Trains the tiny DeepSeek-V2-architecture code model (MLA + DeepSeekMoE) on CPU with
transformers' own DeepseekV2ForCausalLM. Resumable: a checkpoint every --save-every steps
(model, optimizer, schedule, data position, RNG); run it again to continue. Logs the loss to
LOG (step, tokens, loss, learning rate, seconds). Stops at --steps or after --hours.

    python tools/train_tiny/train.py --data /root/tiny/train.u16 --work /root/tiny/run \
        --tokenizer models/tiny-coder/tokenizer.json --hours 2.5
    python tools/train_tiny/train.py ... --export models/tiny-coder   # f16 safetensors + config
"""

import argparse
import json
import math
import pathlib
import shutil
import time

import numpy as np
import torch
from transformers import DeepseekV2Config, DeepseekV2ForCausalLM

SEQ = 1024


def config(vocab_size, bos, eos):
    return DeepseekV2Config(
        vocab_size=vocab_size,
        hidden_size=256,
        intermediate_size=768,
        moe_intermediate_size=192,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=4,
        n_shared_experts=1,
        n_routed_experts=12,
        num_experts_per_tok=2,
        routed_scaling_factor=1.0,
        kv_lora_rank=64,
        q_lora_rank=None,
        qk_rope_head_dim=16,
        qk_nope_head_dim=32,
        v_head_dim=32,
        topk_method="greedy",
        n_group=1,
        topk_group=1,
        norm_topk_prob=False,
        first_k_dense_replace=1,
        moe_layer_freq=1,
        # The longest sequence it was trained on: the server keeps prompts within it.
        max_position_embeddings=SEQ,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        # Tied: the f16 weights must fit the 32 MB the binary embeds (untied: 34.4 MB).
        tie_word_embeddings=True,
        bos_token_id=bos,
        eos_token_id=eos,
        attention_bias=False,
    )


def lr_at(step, total, peak, warmup=30):
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--hours", type=float, default=2.5)
    parser.add_argument("--save-every", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bf16", action="store_true", help="CPU bf16 autocast (fast with AMX)")
    parser.add_argument("--export", help="write the last checkpoint as f16 safetensors here and stop")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    work = pathlib.Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    vocab = json.loads(pathlib.Path(args.tokenizer).read_text())
    added = {t["content"]: t["id"] for t in vocab["added_tokens"]}
    size = max(max(vocab["model"]["vocab"].values()), max(added.values())) + 1
    cfg = config(size, added["<｜begin▁of▁sentence｜>"], added["<｜end▁of▁sentence｜>"])
    model = DeepseekV2ForCausalLM(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    data = np.memmap(args.data, dtype=np.uint16, mode="r")
    sequences = len(data) // (SEQ + 1)
    state = {"step": 0, "order_seed": args.seed, "elapsed": 0.0}
    checkpoint = work / "checkpoint.pt"
    if checkpoint.exists():
        saved = torch.load(checkpoint, weights_only=False)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        state = saved["state"]
        torch.set_rng_state(saved["rng"])
        print(f"resumed at step {state['step']}")
    if args.export:
        out = pathlib.Path(args.export)
        out.mkdir(parents=True, exist_ok=True)
        model.to(torch.float16).save_pretrained(out, safe_serialization=True)
        if pathlib.Path(args.tokenizer).resolve() != (out / "tokenizer.json").resolve():
            shutil.copy(args.tokenizer, out / "tokenizer.json")
        print(f"exported step {state['step']} to {out}")
        return
    params = sum(p.numel() for p in model.parameters())
    print(f"{params / 1e6:.2f}M parameters, {sequences} sequences of {SEQ} tokens")
    order = np.random.default_rng(state["order_seed"]).permutation(sequences)
    log = open(work / "loss.csv", "a")
    started = time.time() - state["elapsed"]
    model.train()
    while state["step"] < args.steps and time.time() - started < args.hours * 3600:
        step = state["step"]
        rows = [order[(step * args.batch + i) % sequences] for i in range(args.batch)]
        batch = torch.from_numpy(np.stack([data[r * (SEQ + 1):(r + 1) * (SEQ + 1)].astype(np.int64) for r in rows]))
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            logits = model(input_ids=batch[:, :-1]).logits.float()
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, size), batch[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        state["step"] = step + 1
        state["elapsed"] = time.time() - started
        log.write(f"{step + 1},{(step + 1) * args.batch * SEQ},{loss.item():.4f},{lr_at(step, args.steps, args.lr):.6f},{state['elapsed']:.1f}\n")
        log.flush()
        if (step + 1) % 10 == 0:
            print(f"step {step + 1} loss {loss.item():.4f} {state['elapsed']:.0f}s", flush=True)
        if (step + 1) % args.save_every == 0 or state["step"] == args.steps:
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "state": state,
                        "rng": torch.get_rng_state(), "config": cfg.to_dict()}, work / "checkpoint.tmp")
            (work / "checkpoint.tmp").replace(checkpoint)
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "state": state,
                "rng": torch.get_rng_state(), "config": cfg.to_dict()}, work / "checkpoint.tmp")
    (work / "checkpoint.tmp").replace(checkpoint)
    print(f"stopped at step {state['step']} after {state['elapsed']:.0f}s")


if __name__ == "__main__":
    main()
