"""Fetches the official SARIF 2.1.0 JSON schema (OASIS), as the crate serde-sarif 0.7.0 ships it
in src/schema.json, from crates.io's static file server; checks the crate's and the schema's
sha256, caches the schema and prints its path.

    python tools/sarif_schema.py [CACHE_DIR]
"""

import io
import pathlib
import sys
import tarfile
import urllib.request

from checked_cache import cache_dir, is_cached, require, write_whole

CRATE_URL = "https://static.crates.io/crates/serde-sarif/serde-sarif-0.7.0.crate"
CRATE_SHA256 = "b39432f20e354de863582451c54bac03ffa63f7dd77f8b1e0ddee211950ab2a2"
SCHEMA_MEMBER = "serde-sarif-0.7.0/src/schema.json"
SCHEMA_SHA256 = "af47e7b67f24efe74076621fd3a5fbe7398add9e84fe820c971219a385895cea"
DEFAULT_CACHE = cache_dir("sarif-2.1.0")


def fetch(cache=DEFAULT_CACHE):
    """The path of the cached, checked sarif-schema-2.1.0.json."""
    target = pathlib.Path(cache) / "sarif-schema-2.1.0.json"
    if is_cached(target, SCHEMA_SHA256):
        return target
    crate = urllib.request.urlopen(CRATE_URL, timeout=60).read()
    require(crate, CRATE_SHA256, CRATE_URL)
    with tarfile.open(fileobj=io.BytesIO(crate)) as archive:
        schema = archive.extractfile(SCHEMA_MEMBER).read()
    require(schema, SCHEMA_SHA256, "schema.json")
    write_whole(target, schema)
    return target


if __name__ == "__main__":
    print(fetch(*sys.argv[1:2]))
