"""Jobs with one home each: the atomic file write (trainer.atomic), the sha256 (trainer.digest),
the rank's slice of a global batch (trainer.data.order.micro_batch_start). Their behaviour, and
a scan that no second implementation of the first two grows back in pipeline/, trainer/ or
bench/."""

from __future__ import annotations

import hashlib
import io
import os
import re
from pathlib import Path

import pytest

from tests.helpers import REPO
from trainer import atomic
from trainer.atomic import open_atomic, write_text_atomic
from trainer.data.order import micro_batch_start
from trainer.digest import HashingWriter, sha256_bytes, sha256_file, sha256_stream


def test_atomic_write_replaces_the_file_in_one_step(tmp_path, monkeypatch):
    target = tmp_path / "out.json"
    target.write_text("old")
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    with open_atomic(str(target)) as f:
        f.write(b"new ")
        # Mid-write: the old file is whole, the new bytes sit in a temp file beside it.
        assert target.read_text() == "old"
        (tmp,) = [p for p in tmp_path.iterdir() if p != target]
        assert tmp.name.startswith(".tmp-out.json-")
        f.write(b"bytes")
    assert target.read_bytes() == b"new bytes" and len(synced) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]
    write_text_atomic(str(target), "é\n")
    assert target.read_bytes() == "é\n".encode() and len(synced) == 2


def test_a_failed_atomic_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "out.png"
    target.write_bytes(b"old")

    def writer_that_dies(f):
        f.write(b"half a fi")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"), open_atomic(str(target)) as f:
        writer_that_dies(f)
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["out.png"]
    # A failing fsync (the data never reached the disk) is no success either.
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError("EIO")))
    with pytest.raises(OSError, match="EIO"):
        write_text_atomic(str(target), "new")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["out.png"]


def test_a_failed_rename_leaves_no_temp(tmp_path):
    (tmp_path / "a_folder").mkdir()  # os.replace cannot put a file over a folder
    with pytest.raises(OSError):
        write_text_atomic(str(tmp_path / "a_folder"), "x")
    assert os.listdir(tmp_path) == ["a_folder"]


def test_the_one_sha256_agrees_with_hashlib_on_every_input(tmp_path):
    data = os.urandom(3 * 1024 * 1024) * 3  # more than two chunks
    want = hashlib.sha256(data).hexdigest()
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(str(tmp_path / "f")) == sha256_stream(io.BytesIO(data)) == want
    assert sha256_bytes(data) == want and sha256_bytes(b"") == hashlib.sha256().hexdigest()
    sink = HashingWriter(io.BytesIO())
    sink.write(data[:5])
    sink.write(data[5:])
    assert sink.sha256() == want and sink.bytes == len(data)


def test_every_world_size_trains_the_same_samples_per_step():
    g, b_total = 48, {1: 48, 2: 24, 4: 12}  # global batch; per-rank samples per step
    for world, per_rank in b_total.items():
        for micro_bs in (per_rank, per_rank // 2, per_rank // 4):
            micros = per_rank // micro_bs
            got = sorted(s for micro in range(micros) for rank in range(world)
                         for s in range(micro_batch_start(3, micro, rank, world, g, micro_bs),
                                        micro_batch_start(3, micro, rank, world, g, micro_bs)
                                        + micro_bs))
            assert got == list(range(3 * g, 4 * g)), (world, micro_bs)


# ---------------------------------------------------------------------------------------------
# One home: os.replace / os.rename / a Beam rename (the atomic write) and hashlib.sha256 (the
# digest) appear only in their helper modules, and in the folder swaps listed with why.
# ---------------------------------------------------------------------------------------------

PATTERNS = {
    "rename": re.compile(r"\bos\.(?:replace|rename)\(|FileSystems\.rename\(|\.rename\("),
    "sha256": re.compile(r"\bhashlib\.(?:sha256|file_digest|new)\("),
}
HOMES = {
    "rename": {"trainer/atomic.py": "the atomic file write",
               "pipeline/filesystems.py": "the same write on non-local Beam filesystems",
               "trainer/checkpoint.py": "a checkpoint folder swapped in whole",
               "trainer/tools/hf/exporter.py": "an export folder swapped in whole",
               "trainer/tools/hf/local_mlm.py": "a model folder swapped in whole",
               "bench/paper_rows.py": "a plot folder swapped in whole"},
    "sha256": {"trainer/digest.py": "the one sha256"},
}


def second_homes(sources: dict[str, str]) -> list[str]:
    """'path: job' for every file outside the job's homes whose code does the job."""
    return sorted(f"{path}: {job}" for path, text in sources.items()
                  for job, pattern in PATTERNS.items()
                  if path not in HOMES[job] and pattern.search(text))


def project_sources() -> dict[str, str]:
    root = Path(REPO)
    return {str(p.relative_to(root)): p.read_text() for pkg in ("pipeline", "trainer", "bench")
            for p in sorted((root / pkg).rglob("*.py"))}


def test_no_second_atomic_write_or_sha256():
    sources = project_sources()
    assert second_homes(sources) == []
    # Every listed home still does its job (a stale entry would hide a new file of that name).
    stale = [f"{p}: {job}" for job, homes in HOMES.items() for p in homes
             if not PATTERNS[job].search(sources.get(p, ""))]
    assert stale == []


def test_the_one_home_scan_sees_a_planted_copy():
    """Negative control: a hand-rolled rename and a local sha256 outside the homes are
    reported; the same code in its home is not."""
    planted = {
        "trainer/tools/new_tool.py": "tmp = p + '.tmp'\nos.replace(tmp, p)\n",
        "pipeline/new_job.py": "digest = hashlib.sha256()\n",
        "trainer/data/new_cache.py": "h = hashlib.file_digest(f, 'sha256')\nPath(t).rename(p)\n",
        "trainer/atomic.py": "os.replace(tmp, path)\n",
        "trainer/digest.py": "hashlib.sha256()\n",
    }
    assert second_homes(planted) == [
        "pipeline/new_job.py: sha256", "trainer/data/new_cache.py: rename",
        "trainer/data/new_cache.py: sha256", "trainer/tools/new_tool.py: rename"]


def test_the_encoder_shape_is_declared_once():
    """[model] is EncoderShape, [aux]'s keys are EncoderShape fields (so EncoderConfig.aux can
    take them by name), EncoderConfig adds only the vocabulary and sequence length, and the
    inherited keys keep their documentation for --help-config."""
    import dataclasses

    from trainer.config.load import field_docs
    from trainer.config.sections import AuxConfig, EncoderShape, ModelConfig, shape_fields
    from trainer.model.encoder_config import EncoderConfig

    def names(cls):
        return [f.name for f in dataclasses.fields(cls)]

    assert names(ModelConfig) == list(shape_fields()) and issubclass(ModelConfig, EncoderShape)
    assert set(names(AuxConfig)) <= set(shape_fields())
    assert set(names(EncoderConfig)) - set(shape_fields()) == {"vocab_size", "max_seq_len"}
    assert all(field_docs(ModelConfig)[name] for name in shape_fields())
