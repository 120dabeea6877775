"""A build cache that outlives one daemon home: layer blobs keyed by what produced them.

A runtime build's layers are content-addressed twice: each layer blob by its digest, and each
*build step* by its cache key (``sha256`` over the parent's key and the step's canonical
definition, see :mod:`capsa.runtimes.builder`). Inside one daemon the committed snapshots are
the cache. This directory (optional, configured per daemon) extends it across homes, the way
BuildKit's ``type=local`` cache does: CI machines and test daemons that start from an empty
home import a step's layer instead of running it again.

Layout: ``ROOT/keys/<key hex>.json`` (``{"digest", "size", "media_type"}``) and
``ROOT/blobs/sha256/<hex>``. Entries are written blob first, then the key file, each by an
atomic rename, so a reader sees a complete entry or none. A blob is re-hashed before use: a
corrupt one is dropped and counts as a miss, never imported.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from capsa.images.content import digest_file
from capsa.images.oci import Digest

__all__ = ["BuildCache", "CachedLayer"]


@dataclass(frozen=True)
class CachedLayer:
    key: str
    digest: str
    size: int
    media_type: str
    path: Path


class BuildCache:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._keys = self.root / "keys"
        self._blobs = self.root / "blobs" / "sha256"

    def get(self, key: str) -> CachedLayer | None:
        hexkey = Digest(key).hex
        try:
            meta = json.loads((self._keys / f"{hexkey}.json").read_text())
            digest = Digest(meta["digest"])
            size, media_type = int(meta["size"]), str(meta["media_type"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        path = self._blobs / digest.hex
        try:
            actual, actual_size = digest_file(path)
        except OSError:
            return None
        if actual != digest or actual_size != size:
            with contextlib.suppress(OSError):
                path.unlink()
                (self._keys / f"{hexkey}.json").unlink()
            return None
        return CachedLayer(key=key, digest=digest, size=size, media_type=media_type, path=path)

    def put(self, key: str, blob: Path, digest: str, size: int, media_type: str) -> None:
        hexkey = Digest(key).hex
        digest = Digest(digest)
        self._keys.mkdir(parents=True, exist_ok=True)
        self._blobs.mkdir(parents=True, exist_ok=True)
        target = self._blobs / digest.hex
        if not target.exists():
            tmp = self._blobs / f".tmp-{secrets.token_hex(6)}"
            try:
                shutil.copyfile(blob, tmp)  # copy_file_range / sendfile under the hood
                os.replace(tmp, target)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
        meta = json.dumps({"digest": digest, "size": size, "media_type": media_type})
        tmp_meta = self._keys / f".tmp-{secrets.token_hex(6)}"
        tmp_meta.write_text(meta)
        os.replace(tmp_meta, self._keys / f"{hexkey}.json")
