"""Turns the corpus into training tokens: documents, half of them in PSM fill-in-the-middle form,
and repository-level samples (several files of one package, each headed by its path as a comment,
the way the context builder lays out prompts), packed into one flat uint16 array.

    python tools/train_tiny/data.py --corpus /root/tiny/corpus --tokenizer models/tiny-coder/tokenizer.json \
        --out /root/tiny/train.u16 --epochs 3
"""

import argparse
import pathlib
import random

import numpy as np
from tokenizers import Tokenizer

from tokenizer import BOS, EOS, FIM_BEGIN, FIM_END, FIM_HOLE

COMMENT = {".py": "#", ".rs": "//"}
FIM_RATE = 0.5
REPO_RATE = 0.5
# Longest sample in characters (the model reads 1024 tokens; longer ones are cut).
MAX_CHARS = 6000


def packages(split_dir):
    """{package: [(relative path, text)]} of one split."""
    result = {}
    for package in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        files = []
        for path in sorted(package.rglob("*")):
            if path.is_file() and path.suffix in COMMENT:
                files.append((str(path.relative_to(package)), path.read_text()))
        if files:
            result[package.name] = files
    return result


def headed(package, relative, text):
    comment = COMMENT[pathlib.Path(relative).suffix]
    return f"{comment} {package}/{relative}\n{text}"


def window(text, rng):
    """A random stretch of a long file, starting at a line."""
    if len(text) <= MAX_CHARS:
        return text
    start = rng.randrange(0, len(text) - MAX_CHARS)
    start = text.rfind("\n", 0, start) + 1
    return text[start:start + MAX_CHARS]


def fim_split(text, rng):
    """(prefix, middle, suffix): the rest of a line, a few whole lines, or a random span."""
    lines = text.splitlines(keepends=True)
    kind = rng.random()
    if kind < 0.4 and lines:
        i = rng.randrange(len(lines))
        start = sum(len(l) for l in lines[:i])
        cut = start + rng.randrange(0, max(1, len(lines[i].rstrip("\n"))))
        end = start + len(lines[i].rstrip("\n"))
        return text[:cut], text[cut:end], text[end:]
    if kind < 0.8 and lines:
        i = rng.randrange(len(lines))
        n = rng.randint(1, 8)
        start = sum(len(l) for l in lines[:i])
        end = start + sum(len(l) for l in lines[i:i + n])
        return text[:start], text[start:end], text[end:]
    a = rng.randrange(0, len(text) + 1)
    b = min(len(text), a + rng.randint(1, 256))
    return text[:a], text[a:b], text[b:]


def sample(package, files, rng):
    """One training document as text with special-token strings."""
    relative, text = files[rng.randrange(len(files))]
    context = ""
    if len(files) > 1 and rng.random() < REPO_RATE:
        others = [f for f in files if f[0] != relative]
        for other_path, other_text in rng.sample(others, min(len(others), rng.randint(1, 3))):
            context += headed(package, other_path, window(other_text, rng)[:MAX_CHARS // 3]) + "\n"
    body = headed(package, relative, window(text, rng))
    if rng.random() < FIM_RATE:
        prefix, middle, suffix = fim_split(body, rng)
        return f"{FIM_BEGIN}{context}{prefix}{FIM_HOLE}{suffix}{FIM_END}{middle}{EOS}"
    return f"{context}{body}{EOS}"


def build(split_dir, tokenizer, samples, seed):
    rng = random.Random(seed)
    repo = packages(split_dir)
    names = sorted(repo)
    # Packages weighted by size, so big ones are seen in proportion.
    weights = [sum(len(t) for _, t in repo[n]) for n in names]
    bos = tokenizer.token_to_id(BOS)
    tokens = []
    batch = []
    for i in range(samples):
        name = rng.choices(names, weights)[0]
        batch.append(sample(name, repo[name], rng))
        if len(batch) == 256 or i == samples - 1:
            for encoding in tokenizer.encode_batch(batch, add_special_tokens=False):
                tokens.append(bos)
                tokens.extend(encoding.ids)
            batch = []
    return np.array(tokens, dtype=np.uint16)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--split", default="train")
    parser.add_argument("--samples", type=int, default=40000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    tokenizer = Tokenizer.from_file(args.tokenizer)
    assert tokenizer.get_vocab_size() < 65536
    tokens = build(pathlib.Path(args.corpus, args.split), tokenizer, args.samples, args.seed)
    tokens.tofile(args.out)
    print(f"{len(tokens)} tokens -> {args.out}")


if __name__ == "__main__":
    main()
