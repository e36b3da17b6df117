"""One atomic file write for the whole project: the bytes go to a temporary file beside
``path`` (``.tmp-<name>-<uuid>``, the pattern the pipeline's output cleanup knows), are
flushed and fsynced, then renamed over ``path``; if anything raises first, the temporary file
is removed. A reader sees the old file or the whole new one, never half of it, and a crash
leaves no partial file under the final name.

    with open_atomic(path) as f:          # binary; open_atomic(path, "w") for text
        np.save(f, array)
    write_text_atomic(path, text)

pipeline.filesystems.open_atomic is the variant for Beam filesystems (gs://, s3://, ...); it
hands local paths to this one.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from typing import IO


def temp_path(path: str) -> str:
    """A fresh temporary name in ``path``'s folder: the rename stays on one filesystem."""
    folder, name = os.path.split(path)
    return os.path.join(folder, f".tmp-{name}-{uuid.uuid4().hex}")


@contextlib.contextmanager
def open_atomic(path: str, mode: str = "wb") -> Iterator[IO]:
    """A file (``"wb"`` or ``"w"``, UTF-8) whose content replaces ``path`` when the block ends
    cleanly; when the block raises, ``path`` is untouched and no temporary file is left."""
    if mode not in ("wb", "w"):
        raise ValueError(f"open_atomic writes whole files: mode 'wb' or 'w', not {mode!r}")
    tmp = temp_path(path)
    try:
        # "x": the name is new, so nothing else's file is ever truncated.
        with open(tmp, mode.replace("w", "x"), **({} if "b" in mode else {"encoding": "utf-8"})
                  ) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())  # the data on disk before the name points at it
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def write_text_atomic(path: str, text: str) -> None:
    with open_atomic(path, "w") as f:
        f.write(text)
