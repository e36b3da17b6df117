"""Benchmark: throughput of ``pipeline.prepare`` on the local runner with 1 and 2 worker
processes, as a ratio against tokenising the same text in a plain Python loop, same run.

    .venv/bin/python bench/prepare.py [--mb 8] [--files 8]

The corpus is real prose (Python standard-library docstrings) repeated to about --mb MiB over
--files plain-text files. The tokenizer is trained once up front and passed to every prepare
run, so the figures are reading + tokenising + splitting + shuffling + writing Parquet; the
loop baseline is ``sp.encode`` over the already-loaded documents (no I/O at all), i.e. the
single-core tokenizer ceiling that the pipeline's per-worker throughput is compared to.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline.prepare import run  # noqa: E402
from pipeline.sources import FileReport, read_file, stdlib_sources  # noqa: E402
from trainer.tokenizer import load_tokenizer  # noqa: E402

TINY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                    "tiny.toml")


def make_corpus(root: str, mb: float, files: int) -> list[str]:
    docs = []
    for path in stdlib_sources():
        docs += [d.text for d in read_file(path, "pydoc", FileReport(path))]
    text = [d.replace("\n\n", "\n") for d in docs]
    target, out, i = mb * 2**20, [], 0
    while sum(map(len, out)) < target:
        out.append(text[i % len(text)])
        i += 1
    per = (len(out) + files - 1) // files
    for f in range(files):
        with open(os.path.join(root, f"part{f:03d}.txt"), "w") as fh:
            fh.write("\n\n".join(out[f * per:(f + 1) * per]) + "\n")
    return out


def prepare(inputs: str, corpus_dir: str, *extra: str) -> tuple[float, dict]:
    argv = ["--config", TINY, "--set", f'data.input=["{inputs}/*.txt"]', "--set",
            "data.format=text", "--set", f"data.corpus_dir={corpus_dir}",
            "--set", "data.part_text_bytes=1048576", *extra]
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        manifest = run(argv)
    return time.perf_counter() - start, manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=8.0)
    parser.add_argument("--files", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        inputs = os.path.join(tmp, "inputs")
        os.makedirs(inputs)
        docs = make_corpus(inputs, args.mb, args.files)

        # Train the tokenizer once (not timed), then reuse it everywhere.
        _, m0 = prepare(inputs, os.path.join(tmp, "c0"), "--direct_num_workers=2")
        model = os.path.join(tmp, "c0", "tokenizer.model")
        sp = load_tokenizer(model)

        start = time.perf_counter()
        loop_tokens = sum(len(sp.encode(d)) for d in docs)
        loop_s = time.perf_counter() - start
        assert loop_tokens == m0["num_tokens"], (loop_tokens, m0["num_tokens"])

        rows = [("python loop, sp.encode only (1 core)", loop_s)]
        for workers in (1, 2):
            secs, m = prepare(inputs, os.path.join(tmp, f"c{workers}"), "--set",
                              f"tokenizer.model={model}", f"--direct_num_workers={workers}")
            assert m["num_tokens"] == loop_tokens
            rows.append((f"prepare, LocalRunner, {workers} worker process(es)", secs))
        # The same job on dask.distributed (pipeline/dask_runner.py): its own 2-process
        # loopback cluster, started and stopped inside the timed call.
        secs, m = prepare(inputs, os.path.join(tmp, "cdask"), "--set",
                          f"tokenizer.model={model}", "--runner", "DaskRunner",
                          "--dask_workers", "2")
        assert m["num_tokens"] == loop_tokens
        rows.append(("prepare, DaskRunner, 2 worker processes", secs))

    mib = sum(len(d.encode()) for d in docs) / 2**20
    print(f"corpus: {mib:.1f} MiB of text, {len(docs):,} documents, {loop_tokens:,} tokens, "
          f"{args.files} files; {os.cpu_count()} cores")
    print(f"{'':48s} {'seconds':>8s} {'tokens/s':>12s} {'vs loop':>8s}")
    for name, secs in rows:
        print(f"{name:48s} {secs:8.2f} {loop_tokens / secs:12,.0f} {loop_s / secs:8.2f}x")


if __name__ == "__main__":
    main()
