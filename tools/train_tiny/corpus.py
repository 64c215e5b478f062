"""Collects the training corpus of the tiny model: permissively licensed code from registries.

Python: the CPython 3.11 standard library (PSF-2.0), as Debian's libpython3.11-stdlib ships it.
Rust: crates from crates.io under MIT and/or Apache-2.0, taken from the local cargo registry
(where `cargo fetch` on this repository puts them) or downloaded from crates.io.

Whole packages/crates are held out for evaluation (HELD_OUT). Writes the files under
OUT/{train,heldout}/<package>/... and the manifest (sources, versions, licenses, sizes, split)
next to this script.

    python tools/train_tiny/corpus.py --out /root/tiny/corpus
"""

import argparse
import glob
import hashlib
import io
import json
import os
import pathlib
import re
import shutil
import sys
import tarfile
import urllib.request

STDLIB = pathlib.Path("/usr/lib/python3.11")
STDLIB_SOURCE = {"name": "cpython-stdlib", "version": "3.11.2 (Debian libpython3.11-stdlib 3.11.2-6+deb12u6)", "license": "PSF-2.0"}
# Whole packages kept out of training, for evaluation.
HELD_OUT = {"python:json", "python:email", "python:asyncio", "rust:regex-syntax", "rust:tokio-util", "rust:clap_builder"}
PERMISSIVE = re.compile(r"(MIT|Apache-2\.0)(\s*(OR|/)\s*(MIT|Apache-2\.0))*")
# Binding crates: machine-generated declarations, not code to learn from.
SKIP_CRATES = re.compile(r"^(windows|linux-raw-sys|libc|.*-sys$|unicode-|encoding_rs)")
MAX_FILE_BYTES = 200_000
GENERATED = re.compile(r"@generated|do not edit|automatically generated|auto-generated", re.I)


def registry_crates():
    roots = glob.glob(os.path.expanduser("~/.cargo/registry/src/*/"))
    crates = {}
    for root in roots:
        for entry in sorted(os.listdir(root)):
            match = re.fullmatch(r"(.+)-(\d+\.\d+\.\d+(?:[-+].*)?)", entry)
            if match:
                crates[(match.group(1), match.group(2))] = pathlib.Path(root, entry)
    return crates


def crate_license(path):
    text = (path / "Cargo.toml").read_text(errors="ignore")
    match = re.search(r'^license\s*=\s*"([^"]+)"', text, re.M)
    return match.group(1).strip() if match else None


def download_crate(name, version, dest):
    url = f"https://static.crates.io/crates/{name}/{name}-{version}.crate"
    with urllib.request.urlopen(url) as response:
        data = response.read()
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        archive.extractall(dest, filter="data")
    return pathlib.Path(dest, f"{name}-{version}")


def keep(path):
    if path.stat().st_size > MAX_FILE_BYTES:
        return None
    try:
        text = path.read_text()
    except (UnicodeDecodeError, OSError):
        return None
    head = "\n".join(text.splitlines()[:5])
    if GENERATED.search(head) or not text.strip():
        return None
    return text


def copy_package(files, base, target):
    count, size = 0, 0
    for path in sorted(files):
        text = keep(path)
        if text is None:
            continue
        out = target / path.relative_to(base)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        count += 1
        size += len(text.encode())
    return count, size


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--crates", help="a JSON list of [name, version] to use instead of the local registry")
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    packages = []

    # Python: each top-level module or package of the standard library is a package.
    if not STDLIB.is_dir():
        sys.exit(f"{STDLIB} is missing: install Debian's libpython3.11-stdlib")
    for entry in sorted(STDLIB.iterdir()):
        if entry.name in {"test", "idlelib", "site-packages", "dist-packages", "lib2to3", "turtledemo"} or entry.name.startswith("__"):
            continue
        if entry.is_dir() and (entry / "__init__.py").exists():
            files = [p for p in entry.rglob("*.py") if "test" not in p.relative_to(entry).parts]
            name = entry.name
        elif entry.suffix == ".py":
            files, name = [entry], entry.stem
        else:
            continue
        key = f"python:{name}"
        split = "heldout" if key in HELD_OUT else "train"
        count, size = copy_package(files, STDLIB, out / split / f"python-{name}")
        if count:
            packages.append({"package": key, "source": STDLIB_SOURCE["name"], "version": STDLIB_SOURCE["version"],
                             "license": STDLIB_SOURCE["license"], "files": count, "bytes": size, "split": split})

    # Rust: permissively licensed crates.
    available = registry_crates()
    if args.crates:
        wanted = [tuple(c) for c in json.loads(pathlib.Path(args.crates).read_text())]
    else:
        wanted = sorted(available)
    latest = {}
    for name, version in wanted:
        latest[name] = (name, version)  # one version per crate: the last listed
    for name, version in sorted(latest.values()):
        if SKIP_CRATES.match(name):
            continue
        path = available.get((name, version)) or download_crate(name, version, out / ".download")
        license = crate_license(path)
        if not license or not PERMISSIVE.fullmatch(license):
            continue
        key = f"rust:{name}"
        split = "heldout" if key in HELD_OUT else "train"
        files = [p for p in path.rglob("*.rs") if "target" not in p.parts]
        count, size = copy_package(files, path, out / split / f"rust-{name}")
        if count:
            packages.append({"package": key, "source": "crates.io", "version": version, "license": license,
                             "files": count, "bytes": size, "split": split})
    shutil.rmtree(out / ".download", ignore_errors=True)

    digest = hashlib.sha256()
    for path in sorted(out.rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(out)).encode())
            digest.update(path.read_bytes())
    manifest = {
        "held_out": sorted(HELD_OUT),
        "sha256": digest.hexdigest(),
        "totals": {split: {"packages": sum(p["split"] == split for p in packages),
                           "bytes": sum(p["bytes"] for p in packages if p["split"] == split)}
                   for split in ("train", "heldout")},
        "packages": packages,
    }
    manifest_path = pathlib.Path(__file__).with_name("manifest.json")
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    print(json.dumps(manifest["totals"]))


if __name__ == "__main__":
    main()
