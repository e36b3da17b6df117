"""Files through Beam filesystems (local, gs://, s3://, ...): paths, reads, and atomic writes,
also as a stream that hashes what it writes.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from trainer import atomic
from trainer.digest import HashingWriter


def join(root: str, *names: str) -> str:
    return FileSystems.join(root.rstrip("/"), *names)


@contextlib.contextmanager
def open_atomic(path: str) -> Iterator[HashingWriter]:
    """A stream that replaces ``path`` when the block ends cleanly, counting and hashing what
    it writes. A local path goes to trainer.atomic.open_atomic (fsync, then rename); any other
    Beam filesystem (gs://, s3://, ...) is written to a temporary name beside ``path``
    (``.tmp-<name>-<uuid>``, what ``prepare_output`` cleans up) and renamed through
    ``FileSystems``. When the block raises, the temporary file is deleted: a reader sees no
    file or the whole new one, and a retried write is harmless. Missing folders are created,
    as Beam's local filesystem does.

        with open_atomic(join(root, "part-00000.parquet")) as sink:
            sink.write(data)
        sink.bytes, sink.sha256()
    """
    if FileSystems.get_scheme(path) is None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with atomic.open_atomic(path) as f:
            yield HashingWriter(f)
        return
    directory, name = FileSystems.split(path)
    tmp = FileSystems.join(directory, f".tmp-{name}-{uuid.uuid4().hex}")
    f = FileSystems.create(tmp, compression_type=CompressionTypes.UNCOMPRESSED)
    try:
        yield HashingWriter(f)
        f.close()
    except BaseException:
        f.close()
        FileSystems.delete([tmp])
        raise
    FileSystems.rename([tmp], [path])


def write_atomic(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through ``open_atomic``."""
    with open_atomic(path) as sink:
        sink.write(data)


def write_json_atomic(path: str, obj) -> None:
    write_atomic(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def read_bytes(path: str) -> bytes:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return f.read()


def exists(path: str) -> bool:
    return FileSystems.exists(path)
