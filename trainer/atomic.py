"""One atomic file write: the text goes to a temporary file beside ``path``, is flushed to disk,
then renamed over ``path``, so a reader sees the old file or the whole new one, never half of
it, and a crash leaves no partial file under the final name."""

from __future__ import annotations

import os


def write_text_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
