"""Fetches NVRTC, NVIDIA's run-time CUDA compiler, as the PyPI package nvidia-cuda-nvrtc-cu12
(the library alone: no GPU, no driver, no CUDA toolkit), checks the wheel's sha256, unpacks the
library into a cache folder and prints its path. The kernels' compile test uses it.

    python tools/nvrtc.py [CACHE_DIR]
"""

import pathlib
import sys
import tempfile
import zipfile

from checked_cache import cache_dir, pip_wheel

VERSION = "12.9.86"
WHEEL_SHA256 = "210cf05005a447e29214e9ce50851e83fc5f4358df8b453155d5e1918094dcb4"
DEFAULT_CACHE = cache_dir(f"nvidia-cuda-nvrtc-cu12-{VERSION}")
LIBRARY_DIR = pathlib.PurePosixPath("nvidia/cuda_nvrtc/lib")
LIBRARY = "libnvrtc.so.12"


def fetch(cache=DEFAULT_CACHE):
    """The path of the unpacked libnvrtc.so.12 (its builtins library lies beside it)."""
    cache = pathlib.Path(cache)
    library = cache / LIBRARY
    if library.exists():
        return library
    cache.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache.parent) as tmp:
        wheel = pip_wheel(f"nvidia-cuda-nvrtc-cu12=={VERSION}", WHEEL_SHA256, tmp,
                          "--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_12_x86_64",
                          "--python-version", "3.12")
        unpacked = pathlib.Path(tmp) / "unpacked"
        unpacked.mkdir()
        with zipfile.ZipFile(wheel) as archive:
            # The library and the builtins it opens by name from its own folder; not the .alt
            # variants (another C++ ABI), which would double the download's unpacked size.
            for member in archive.namelist():
                path = pathlib.PurePosixPath(member)
                if path.parent == LIBRARY_DIR and ".alt." not in path.name:
                    (unpacked / path.name).write_bytes(archive.read(member))
        try:
            unpacked.rename(cache)
        except OSError:
            if not library.exists():
                raise
    return library


if __name__ == "__main__":
    print(fetch(*sys.argv[1:2]))
