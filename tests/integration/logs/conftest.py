from __future__ import annotations

import hashlib
import random
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from capsa.logs import LogChunk, Stream

ChunkGen = Callable[..., Iterator[tuple[Stream, bytes]]]


def _gen_chunks(
    seed: int, total_bytes: int, max_chunk: int = 1 << 20, stderr_ratio: float = 0.3
) -> Iterator[tuple[Stream, bytes]]:
    """Deterministic chunks of varied size (tiny to ``max_chunk``) and content, ``total_bytes`` in all."""
    rng = random.Random(seed)
    pool = rng.randbytes(2 * max_chunk + 4096)
    left = total_bytes
    while left > 0:
        size = min(left, rng.choice((1, 17, 100, 4096, rng.randrange(1, max_chunk + 1), max_chunk)))
        start = rng.randrange(0, len(pool) - size)
        stream = Stream.STDERR if rng.random() < stderr_ratio else Stream.STDOUT
        yield stream, pool[start : start + size]
        left -= size


@dataclass
class Tally:
    """What one side saw: per-stream SHA-256 of the concatenation, chunk count, and seq continuity."""

    first_seq: int = 1
    next_seq: int = 0
    chunks: int = 0
    nbytes: int = 0
    digests: dict[Stream, hashlib._Hash] = field(
        default_factory=lambda: {Stream.STDOUT: hashlib.sha256(), Stream.STDERR: hashlib.sha256()}
    )

    def add(self, stream: Stream, data: bytes, seq: int | None = None) -> None:
        if seq is not None:
            expected = self.next_seq or self.first_seq
            assert seq == expected, f"gap or duplicate: got seq {seq}, expected {expected}"
            self.next_seq = seq + 1
        self.digests[stream].update(data)
        self.chunks += 1
        self.nbytes += len(data)

    def add_chunk(self, chunk: LogChunk) -> None:
        self.add(chunk.stream, chunk.data, chunk.seq)

    def summary(self) -> dict[str, object]:
        return {
            "chunks": self.chunks,
            "bytes": self.nbytes,
            "stdout": self.digests[Stream.STDOUT].hexdigest(),
            "stderr": self.digests[Stream.STDERR].hexdigest(),
        }


@pytest.fixture
def gen_chunks() -> ChunkGen:
    return _gen_chunks


@pytest.fixture
def tally() -> type[Tally]:
    return Tally


@pytest.fixture
def big_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory for hundreds of MB of logs, removed at teardown (pytest keeps old tmp_paths around)."""
    path = tmp_path / "big"
    path.mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)
