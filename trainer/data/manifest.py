"""What every shard set has: format versions and file names, the manifest (read, fingerprinted),
sha256-checked file access on any ``pyarrow.fs`` filesystem, errors that name the job to
re-run (ShardError), and the watch that notices a set replaced under its reader.
"""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from trainer.digest import sha256_bytes, sha256_stream
from trainer.errors import UserError

# Each kind of shard set has its own format version: a new sampler changes the RTD bytes but
# not the corpus, which must not need re-preparing for it. RTD v2 = keyed inverse-CDF sampling
# with 64-bit keys and closed-form model-free samplers (trainer.corruption.sampling.SAMPLER).
SCHEMA_VERSIONS = {"corpus": 1, "rtd": 2}
SCHEMA_VERSION = SCHEMA_VERSIONS["corpus"]
RTD_SCHEMA_VERSION = SCHEMA_VERSIONS["rtd"]
MANIFEST = "manifest.json"
TOKENIZER_FILE = "tokenizer.model"
UNIGRAM_FILE = "unigram_counts.npy"
CONFIG_FILE = "config.toml"


class ShardError(UserError):
    """A shard set is missing, incomplete or inconsistent; the message names the file."""


def resolve_fs(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or a URI such as gs://bucket/dir."""
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def sha256_uri(uri: str) -> str:
    """sha256 of the file at a local path or a URI such as gs://bucket/file
    (``trainer.digest.sha256_file`` for local paths only)."""
    fs, path = resolve_fs(uri)
    with fs.open_input_stream(path) as f:
        return sha256_stream(f)


def manifest_fingerprint(manifest: dict) -> str:
    """sha256 of a shard set's manifest (canonical JSON): what runs and checkpoints record
    to recognise the data they were made from."""
    return sha256_bytes(json.dumps(manifest, sort_keys=True).encode())


def check_sha256(fs: pafs.FileSystem, path: str, root: str, name: str, expected: str,
                 job: str) -> None:
    with fs.open_input_stream(f"{path}/{name}") as f:
        got = sha256_stream(f)
    if got != expected:
        raise ShardError(f"{root}/{name}: sha256 {got} differs from the manifest's {expected}: "
                         f"the file changed or is corrupt; re-run {job} --overwrite")


def unreadable(root: str, name: str, job: str, e: Exception) -> ShardError:
    """The ShardError for a listed file pyarrow cannot parse (truncated or corrupt on disk):
    pyarrow's own message ("Parquet magic bytes not found in footer") names neither the shard
    set nor the fix."""
    why = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    return ShardError(f"{root}/{name} is not a readable Parquet file ({why}): it is truncated "
                      f"or corrupt; re-run {job} --overwrite (--verify-checksums checks every "
                      "file of the set against its manifest sha256)")


def open_listed(fs: pafs.FileSystem, path: str, root: str, entry: dict,
                job: str) -> pq.ParquetFile:
    """Open the Parquet file of a manifest ``entry`` (name, rows), checking that it exists,
    that its footer parses and that its row count is the manifest's; ``job`` is what re-creates
    the set."""
    try:
        pf = pq.ParquetFile(fs.open_input_file(f"{path}/{entry['name']}"))
    except FileNotFoundError:
        raise ShardError(f"{root}/{entry['name']} is listed in the manifest but missing; "
                         f"re-run {job} --overwrite") from None
    except (pa.ArrowInvalid, OSError) as e:
        raise unreadable(root, entry["name"], job, e) from None
    rows = pf.metadata.num_rows
    if rows != entry["rows"]:
        raise ShardError(f"{root}/{entry['name']} has {rows} rows, the manifest says "
                         f"{entry['rows']}; re-run {job} --overwrite")
    return pf


def verify_files(fs: pafs.FileSystem, path: str, root: str, entries: list[dict], job: str,
                 checksums: bool) -> None:
    """Every Parquet file of ``entries`` (name, rows, sha256) is present with its row count
    and, with ``checksums``, its sha256 (a full read). ``job`` is what re-creates the set."""
    for entry in entries:
        open_listed(fs, path, root, entry, job).close()
        if checksums:
            check_sha256(fs, path, root, entry["name"], entry["sha256"], job)


JOBS = {"corpus": "fast-electra prepare", "rtd": "fast-electra generate"}


class ManifestWatch:
    """Notices that the shard set a reader opened was replaced under it (``--overwrite`` of
    the folder while a trainer reads it): a file opened or a row group read after that would
    come from another set, or be missing, or (on an object store) mix two sets' bytes.

    Cheap enough to run at every file open and row-group read: one stat of the manifest,
    compared with the (size, mtime) seen when the set was opened. Only when that differs is
    the manifest read again; the same content (a re-run that wrote the very same set) is not
    a replacement. Every job deletes the manifest before it deletes or rewrites a file and
    writes it last, so a read whose data could come from another set is always followed by a
    check that sees the manifest gone or changed."""

    def __init__(self, fs: pafs.FileSystem, path: str, root: str, kind: str,
                 name: str = MANIFEST):
        self.fs, self.path, self.root, self.kind, self.name = fs, path, root, kind, name
        self._stat = self._stat_now()  # before the read: a change in between is seen later
        self.manifest = read_manifest(root, kind, name)
        self._fingerprint = manifest_fingerprint(self.manifest)

    def _stat_now(self) -> tuple[int, int] | None:
        info = self.fs.get_file_info(f"{self.path}/{self.name}")
        if info.type == pafs.FileType.NotFound:
            return None
        return info.size, info.mtime_ns

    def check(self, name: str) -> None:
        """Raise a ShardError naming ``name`` if the set is no longer the one opened."""
        now = self._stat_now()
        if now == self._stat:
            return
        if now is not None:
            try:
                with self.fs.open_input_stream(f"{self.path}/{self.name}") as f:
                    same = manifest_fingerprint(json.loads(f.read())) == self._fingerprint
            except (FileNotFoundError, json.JSONDecodeError):
                same = False
            if same:
                self._stat = now
                return
        raise ShardError(
            f"{self.root}/{name}: the {self.kind} shard set in {self.root} was replaced while "
            f"this process was reading it ({self.name} {'is gone' if now is None else 'changed'}"
            f": e.g. {JOBS[self.kind]} --overwrite into the folder), so its files are no "
            "longer the ones this run started on. Stop writing into a folder a trainer reads: "
            "write the new set to another folder. To go on training on the new set, start a "
            "new run on it; to resume this run, recreate the old set (same config and inputs) "
            "and resume from the last checkpoint")

    def open(self, entry: dict) -> pq.ParquetFile:
        """``open_listed`` for this set: a missing or different file of a replaced set is
        reported as the replacement."""
        try:
            pf = open_listed(self.fs, self.path, self.root, entry, JOBS[self.kind])
        except ShardError:
            self.check(entry["name"])
            raise
        try:
            self.check(entry["name"])
        except ShardError:
            pf.close()
            raise
        return pf


def read_manifest(root: str, kind: str, name: str = MANIFEST) -> dict:
    """The manifest of a complete shard set of ``kind`` ("corpus" or "rtd"); with ``name``
    another file of the same header (an RTD set's ``plan.json``, trainer.data.sealed)."""
    fs, path = resolve_fs(root)
    try:
        with fs.open_input_stream(f"{path}/{name}") as f:
            manifest = json.loads(f.read())
    except FileNotFoundError:
        raise ShardError(
            f"{root} has no {MANIFEST}: the {kind} shard set is incomplete (an interrupted or "
            f"failed run) or was never made. Run the pipeline step that writes it "
            f"({'fast-electra prepare' if kind == 'corpus' else 'fast-electra generate'}) again"
        ) from None
    except json.JSONDecodeError as e:
        raise ShardError(f"{root}/{name} is not valid JSON ({e}); re-run the pipeline "
                         "with --overwrite") from None
    if manifest.get("kind") != kind:
        raise ShardError(f"{root} holds a {manifest.get('kind')!r} shard set, not {kind!r}")
    want = SCHEMA_VERSIONS[kind]
    if manifest.get("schema_version") != want:
        job = "fast-electra prepare" if kind == "corpus" else "fast-electra generate"
        why = (" (another sampler: its bytes are not what fast-electra generates, and a "
               "fast-online run would not see the same rows)" if kind == "rtd" else "")
        raise ShardError(f"{root}: {kind} schema_version {manifest.get('schema_version')} is "
                         f"not the supported {want}{why}; regenerate it with the installed "
                         f"fast-electra: {job} --config C --overwrite")
    return manifest
