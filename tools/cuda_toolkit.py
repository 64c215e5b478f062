"""Fetches the parts of NVIDIA's CUDA 13.0 toolkit that building `--features cuda` needs (nvcc,
its headers and NVVM, from PyPI; sha256-checked), unpacks them into a cache folder, and prints
the environment for cargo. CUDA 13.0 matches the driver of the GPU machines we measure on (580):
PTX from a newer toolkit would not load there.

    eval "$(python3 tools/cuda_toolkit.py)"
    cargo check --features cuda      # about 16 minutes on 2 cores: candle's kernels go through nvcc

Linking (`cargo build --features cuda`) also needs libcuda, cuBLAS, cuRAND and NVRTC to link
against, which this does not fetch.
"""

import os
import pathlib
import stat
import sys
import tempfile
import zipfile

from checked_cache import cache_dir, pip_wheel

WHEELS = {
    "nvidia-cuda-nvcc==13.0.88": "56fe502eb77625a12f25172caa3cdddb4e4c8ba2c8c17dba44b164761b380f03",
    "nvidia-cuda-runtime==13.0.96": "7f82250d7782aa23b6cfe765ecc7db554bd3c2870c43f3d1821f1d18aebf0548",
    "nvidia-cuda-crt==13.0.88": "2c8043c7c9e02492716426e9919fc78d2c5b3b2a7a768a88e952676b08aa55a4",
    "nvidia-cuda-cccl==13.0.85": "e0da7ad981f3a8aff08241b5bfc1af868742a63e2762f53a5171c492ef242649",
    "nvidia-nvvm==13.0.88": "c5f41ffeb6466944a026dfa5317d7d85355c119bbec279205d22f1869d1054e0",
}
DEFAULT_CACHE = cache_dir("cuda-toolkit-13.0")
ROOT = pathlib.PurePosixPath("nvidia/cu13")
PLATFORMS = ["--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64",
             "--platform", "manylinux_2_12_x86_64", "--python-version", "3.12"]


def fetch(cache=DEFAULT_CACHE):
    """The toolkit root (bin/nvcc, include/, lib/, nvvm/)."""
    cache = pathlib.Path(cache)
    root = cache / ROOT
    if (root / "bin" / "nvcc").exists():
        return root
    cache.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache.parent) as tmp:
        unpacked = pathlib.Path(tmp) / "unpacked"
        for requirement, sha256 in WHEELS.items():
            folder = pathlib.Path(tmp) / requirement.split("==")[0]
            wheel = pip_wheel(requirement, sha256, folder, *PLATFORMS)
            with zipfile.ZipFile(wheel) as archive:
                archive.extractall(unpacked)
        # Wheels do not keep the executable bits of nvcc and its helpers.
        for folder in ("bin", "nvvm/bin"):
            for tool in (unpacked / ROOT / folder).iterdir():
                if tool.is_file():
                    tool.chmod(tool.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        try:
            os.rename(unpacked, cache)
        except OSError:
            if not (root / "bin" / "nvcc").exists():
                raise
    return root


if __name__ == "__main__":
    root = fetch(*sys.argv[1:2])
    print(f'export CUDA_PATH="{root}" CUDA_ROOT="{root}" PATH="{root}/bin:$PATH" '
          f'CUDA_COMPUTE_CAP="${{CUDA_COMPUTE_CAP:-90}}"')
