"""Print a summary of a shard set (RTD or corpus) from its manifest.

    python -m pipeline.inspect shards/tiny/rtd            # epochs, rows, replaced fraction,
                                                          # temperature range per epoch, aux
    python -m pipeline.inspect shards/tiny/rtd --verify   # also check every file's sha256
    python -m pipeline.inspect shards/tiny/corpus

Reads only manifest.json (plus the files with ``--verify``); needs no Beam.
"""

from __future__ import annotations

import argparse
import json
import sys

from trainer.cli import main_guard
from trainer.shards import MANIFEST, CorpusShards, RTDShards, ShardError, resolve_fs


def rtd_summary(rtd: RTDShards) -> list[str]:
    m = rtd.manifest
    aux = m.get("aux")
    c = m["corruption"]
    lines = [
        f"RTD shard set {rtd.root}",
        f"  corpus      {m['corpus']['dir']} (manifest sha256 "
        f"{m['corpus']['manifest_sha256'][:16]}...)",
        "  aux         " + ("none (model-free replacement)" if aux is None else
                            f"{aux['checkpoint']} step {aux.get('step')} state sha256 "
                            f"{aux['state_sha256'][:16]}..."),
        f"  corruption  replacement={c['replacement']} augmentation={c['augmentation']} "
        f"schedule={c['schedule']} t0={c['t0']:g} tau={c['tau']:g} "
        f"granularity={c['granularity']} mask_prob={c['mask_prob']:g}",
        f"  seed {m['seed']}, {m['epochs']} epoch(s) x {m['num_sequences']:,} rows, "
        f"{len(m['files'])} part(s), {m['num_tokens']:,} tokens, "
        f"{m['shard_bytes'] / max(m['num_tokens'], 1):.3f} bytes/token "
        f"(input_ids {m['token_dtype']})",
        "  epoch       rows      tokens  replaced   temperature",
    ]
    for e in range(rtd.num_epochs):
        files = rtd.epoch_files(e)
        rows = sum(f["rows"] for f in files)
        tokens = sum(f["tokens"] for f in files)
        replaced = sum(f["replaced"] for f in files)
        lo = min(f["temperature_min"] for f in files)
        hi = max(f["temperature_max"] for f in files)
        lines.append(f"  {e:5d} {rows:10,d} {tokens:11,d} {replaced / max(tokens, 1):8.2%}   "
                     f"{hi:.4f} -> {lo:.4f}")
    return lines


def corpus_summary(corpus: CorpusShards) -> list[str]:
    m = corpus.manifest
    return [
        f"corpus shard set {corpus.root}",
        f"  {m['num_documents']:,} documents, {m['num_sequences']:,} sequences, "
        f"{m['num_tokens']:,} tokens in {len(m['files'])} part(s); vocab "
        f"{m['tokenizer']['vocab_size']}, max_seq_len {m['max_seq_len']}, "
        f"{m['shard_bytes'] / max(m['num_tokens'], 1):.3f} bytes/token",
    ]


def run(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(prog="python -m pipeline.inspect", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", help="a shard set folder (the one holding manifest.json)")
    parser.add_argument("--verify", action="store_true",
                        help="check every file's row count and sha256 (reads everything)")
    args = parser.parse_args(argv)
    fs, path = resolve_fs(args.dir)
    try:
        with fs.open_input_stream(f"{path}/{MANIFEST}") as f:
            kind = json.loads(f.read()).get("kind")
    except (FileNotFoundError, json.JSONDecodeError):
        kind = "rtd"  # let the reader explain what is wrong
    if kind == "corpus":
        shards = CorpusShards(args.dir)
        lines = corpus_summary(shards)
    elif kind == "rtd":
        shards = RTDShards(args.dir)
        lines = rtd_summary(shards)
    else:
        raise ShardError(f"{args.dir}/{MANIFEST}: unknown kind {kind!r}")
    if args.verify:
        shards.verify(checksums=True)
        lines.append("  verified: every file present, row counts and sha256 match")
    print("\n".join(lines))
    return lines


def main(argv: list[str] | None = None) -> int:
    return main_guard(run, argv)


if __name__ == "__main__":
    sys.exit(main())
