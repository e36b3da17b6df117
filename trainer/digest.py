"""The project's sha256: one chunked reader for files and streams (local, pyarrow or Beam
file objects alike), and a writer that hashes what passes through it, so a file streamed to
remote storage never has to be read back.

    sha256_file("shards/tiny/corpus/part-00000.parquet")
    with fs.open_input_stream(path) as f: sha256_stream(f)
    sha256_bytes(json.dumps(manifest).encode())
"""

from __future__ import annotations

import hashlib
import io

# Large enough that the per-read overhead vanishes, small enough to never matter for memory.
CHUNK_BYTES = 1 << 22


def sha256_stream(f) -> str:
    """Hex sha256 of everything left to read in the binary stream ``f``, read in chunks."""
    digest = hashlib.sha256()
    while chunk := f.read(CHUNK_BYTES):
        digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: str) -> str:
    with open(path, "rb") as f:
        return sha256_stream(f)


def sha256_bytes(data: bytes) -> str:
    return sha256_stream(io.BytesIO(data))


class HashingWriter:
    """A writable binary stream that counts and hashes what goes through it to ``f``."""

    def __init__(self, f):
        self._f, self._sha256, self.bytes = f, hashlib.sha256(), 0

    def write(self, data) -> int:
        self._f.write(data)
        self._sha256.update(data)
        self.bytes += len(data)
        return len(data)

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        """A no-op: whoever opened ``f`` closes it (pyarrow closes the sinks it is given, and
        an atomic write must fsync and rename after the last byte)."""

    @property
    def closed(self) -> bool:
        return False

    def sha256(self) -> str:
        return self._sha256.hexdigest()
