"""Writes the logits transformers computes for the shipped tiny model on held-out code, so the
engine's forward pass can be checked against it (engine/tests/tiny_coder.rs).

    python tools/train_tiny/golden.py --model models/tiny-coder --corpus /root/tiny/corpus \
        --out engine/tests/fixtures/tiny-coder/reference.safetensors

The model is loaded from the shipped f16 weights and run in f32 with eager attention. Samples come
from the held-out packages (the first file of at least 4,000 characters of each of three packages,
in sorted order), so the fixture does not depend on the training run's data. The file holds:
  input_ids    [S, T]         int64   BOS then the first T-1 tokens of each sample
  positions    [P]            int64   the positions whose logits are kept (every 16th and the last)
  logits       [S, P, vocab]  float32 transformers' logits at those positions
  fim_prefix   [bytes]        uint8   a fill-in-the-middle prompt's prefix and suffix (UTF-8)
  fim_suffix   [bytes]        uint8
  greedy_ids   [L + G]        int64   the FIM prompt's L ids, then G ids greedy generate chose
  prompt_len   [1]            int64   L
"""

import argparse
import json
import pathlib
import sys

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer
from transformers import DeepseekV2ForCausalLM

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from make_golden import greedy_generate  # noqa: E402  (tools/, beside this folder)

PACKAGES = ["python-json", "rust-regex-syntax", "python-email"]
TOKENS = 128
EVERY = 16
GREEDY_TOKENS = 24
BOS, FIM_BEGIN, FIM_HOLE, FIM_END = (
    "<｜begin▁of▁sentence｜>",
    "<｜fim▁begin｜>",
    "<｜fim▁hole｜>",
    "<｜fim▁end｜>",
)


def first_long_file(package: pathlib.Path) -> pathlib.Path:
    for path in sorted(p for p in package.rglob("*") if p.suffix in (".py", ".rs")):
        if len(path.read_text(encoding="utf-8")) >= 4000:
            return path
    raise SystemExit(f"{package}: no file of 4,000 characters")


def fim_parts(text: str) -> tuple[str, str]:
    """Prefix up to the middle of a line about 1,200 characters in; suffix: the next 8 lines."""
    lines = text[:4000].splitlines(keepends=True)
    at, used = 0, 0
    for i, line in enumerate(lines):
        if used >= 1200 and len(line.strip()) >= 12:
            at = i
            break
        used += len(line)
    line = lines[at]
    indent = len(line) - len(line.lstrip())
    cut = indent + (len(line) - indent) // 3
    prefix = "".join(lines[:at]) + line[:cut]
    suffix = line[cut:] + "".join(lines[at + 1 : at + 9])
    return prefix, suffix


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--corpus", required=True, help="the folder corpus.py wrote (its heldout/)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.manual_seed(0)
    tokenizer = Tokenizer.from_file(str(pathlib.Path(args.model) / "tokenizer.json"))
    special = {name: tokenizer.token_to_id(name) for name in (BOS, FIM_BEGIN, FIM_HOLE, FIM_END)}
    model = DeepseekV2ForCausalLM.from_pretrained(args.model, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    heldout = pathlib.Path(args.corpus) / "heldout"
    texts = [first_long_file(heldout / package).read_text(encoding="utf-8") for package in PACKAGES]
    rows = []
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=False).ids[: TOKENS - 1]
        rows.append([special[BOS]] + ids)
    input_ids = torch.tensor(rows, dtype=torch.int64)
    positions = torch.tensor(sorted(set(range(0, TOKENS, EVERY)) | {TOKENS - 1}), dtype=torch.int64)
    with torch.no_grad():
        logits = model(input_ids=input_ids).logits.float()[:, positions]

    prefix, suffix = fim_parts(texts[0])
    encode = lambda s: tokenizer.encode(s, add_special_tokens=False).ids  # noqa: E731
    prompt = (
        [special[BOS], special[FIM_BEGIN]] + encode(prefix) + [special[FIM_HOLE]] + encode(suffix) + [special[FIM_END]]
    )
    generated, margin = greedy_generate(
        model, torch.tensor([prompt], dtype=torch.int64), GREEDY_TOKENS, "the FIM greedy continuation"
    )

    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    as_bytes = lambda s: torch.tensor(list(s.encode("utf-8")), dtype=torch.uint8)  # noqa: E731
    save_file(
        {
            "input_ids": input_ids.contiguous(),
            "positions": positions,
            "logits": logits.contiguous(),
            "fim_prefix": as_bytes(prefix),
            "fim_suffix": as_bytes(suffix),
            "greedy_ids": generated[0].contiguous(),
            "prompt_len": torch.tensor([len(prompt)], dtype=torch.int64),
        },
        str(out),
        metadata={"samples": json.dumps(PACKAGES), "greedy_margin": f"{margin:.4f}"},
    )
    completion = tokenizer.decode(generated[0, len(prompt) :].tolist(), skip_special_tokens=False)
    print(f"wrote {out}: {len(rows)} samples x {len(positions)} positions, greedy margin {margin:.4f}")
    print(f"FIM greedy completion: {completion!r}")


if __name__ == "__main__":
    main()
