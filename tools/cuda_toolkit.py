"""Fetches the parts of NVIDIA's CUDA 13.0 toolkit that building `--features cuda` needs, from
PyPI (sha256-checked): nvcc, its headers and NVVM to compile candle's kernels, and cuBLAS,
cuRAND and NVRTC to link against. It unpacks them into a cache folder, writes a link-time
stand-in for the driver library (lib/stubs/libcuda.so, soname libcuda.so.1: the binary loads the
real driver where it runs), and prints the environment for cargo. CUDA 13.0 matches the driver
of the GPU machines we measure on (580): PTX from a newer toolkit would not load there.

    eval "$(python3 tools/cuda_toolkit.py)"
    cargo check --features cuda                 # about 16 minutes on 2 cores (candle's kernels)
    cargo build --release --features cuda       # links; about 18 minutes

The binary then needs libcuda.so.1 (the driver), libcublas.so.13, libcublasLt.so.13,
libcurand.so.10, libnvrtc.so.13 and libcudart.so.13 where it runs. cuBLAS makes this a 0.7 GB
download.
"""

import os
import pathlib
import re
import stat
import subprocess
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
    "nvidia-cublas==13.0.2.14": "0cf238ffdbe46c00cb9aa98e7bca745c223a5ca5a53e686ac8b3e5a08fe80d6c",
    "nvidia-curand==10.4.0.35": "1aee33a5da6e1db083fe2b90082def8915f30f3248d5896bcec36a579d941bfc",
    "nvidia-cuda-nvrtc==13.0.88": "ad9b6d2ead2435f11cbb6868809d2adeeee302e9bb94bcf0539c7a40d80e8575",
}
# The unversioned names the linker looks for (-lcublas...), beside the versioned libraries.
LINK_NAMES = ["libcublas.so.13", "libcublasLt.so.13", "libcurand.so.10", "libnvrtc.so.13",
              "libcudart.so.13"]
# Every driver function cudarc 0.19 can call (its driver bindings); the stand-in defines them all.
CUDARC_DRIVER_BINDINGS = "cudarc-0.19.10/src/driver/sys/mod.rs"
DEFAULT_CACHE = cache_dir("cuda-toolkit-13.0")
ROOT = pathlib.PurePosixPath("nvidia/cu13")
PLATFORMS = ["--platform", "manylinux_2_27_x86_64", "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64",
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
        lib = unpacked / ROOT / "lib"
        for name in LINK_NAMES:
            (lib / name.split(".so")[0]).with_suffix(".so").symlink_to(name)
        write_driver_stub(lib / "stubs")
        try:
            os.rename(unpacked, cache)
        except OSError:
            if not (root / "bin" / "nvcc").exists():
                raise
    return root


def write_driver_stub(folder):
    """lib/stubs/libcuda.so: every driver function cudarc binds, each returning an error, under
    the driver's soname. Only the linker reads it."""
    registry = pathlib.Path(os.environ.get("CARGO_HOME", pathlib.Path.home() / ".cargo")) / "registry/src"
    bindings = next(registry.glob(f"*/{CUDARC_DRIVER_BINDINGS}"), None)
    if bindings is None:
        sys.exit("cudarc 0.19.10's sources are not in ~/.cargo/registry: run `cargo fetch` first")
    names = sorted(set(re.findall(r"^pub unsafe fn (cu\w+)", bindings.read_text(), re.M)))
    folder.mkdir(parents=True)
    source = folder / "libcuda_stub.c"
    source.write_text("".join(f"int {name}(void) {{ return 999; }}\n" for name in names))
    subprocess.run(["cc", "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o",
                    str(folder / "libcuda.so"), str(source)], check=True)


if __name__ == "__main__":
    root = fetch(*sys.argv[1:2])
    print(f'export CUDA_PATH="{root}" CUDA_ROOT="{root}" PATH="{root}/bin:$PATH" '
          f'CUDA_COMPUTE_CAP="${{CUDA_COMPUTE_CAP:-90}}"')
