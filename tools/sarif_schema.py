"""Fetches the official SARIF 2.1.0 JSON schema (OASIS), as the crate serde-sarif 0.7.0 ships it
in src/schema.json, from crates.io's static file server; checks the crate's and the schema's
sha256, caches the schema and prints its path.

    python tools/sarif_schema.py [CACHE_DIR]
"""

import hashlib
import io
import os
import pathlib
import sys
import tarfile
import urllib.request

CRATE_URL = "https://static.crates.io/crates/serde-sarif/serde-sarif-0.7.0.crate"
CRATE_SHA256 = "b39432f20e354de863582451c54bac03ffa63f7dd77f8b1e0ddee211950ab2a2"
SCHEMA_MEMBER = "serde-sarif-0.7.0/src/schema.json"
SCHEMA_SHA256 = "af47e7b67f24efe74076621fd3a5fbe7398add9e84fe820c971219a385895cea"
DEFAULT_CACHE = pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache")) / "deepseek-lsp/sarif-2.1.0"


def fetch(cache=DEFAULT_CACHE):
    """The path of the cached, checked sarif-schema-2.1.0.json."""
    cache = pathlib.Path(cache)
    target = cache / "sarif-schema-2.1.0.json"
    if target.exists() and hashlib.sha256(target.read_bytes()).hexdigest() == SCHEMA_SHA256:
        return target
    crate = urllib.request.urlopen(CRATE_URL, timeout=60).read()
    if hashlib.sha256(crate).hexdigest() != CRATE_SHA256:
        sys.exit(f"{CRATE_URL}: sha256 mismatch, refusing it")
    with tarfile.open(fileobj=io.BytesIO(crate)) as archive:
        schema = archive.extractfile(SCHEMA_MEMBER).read()
    if hashlib.sha256(schema).hexdigest() != SCHEMA_SHA256:
        sys.exit("schema.json: sha256 mismatch, refusing it")
    cache.mkdir(parents=True, exist_ok=True)
    partial = cache / f"schema.{os.getpid()}"
    partial.write_bytes(schema)
    os.replace(partial, target)
    return target


if __name__ == "__main__":
    print(fetch(*sys.argv[1:2]))
