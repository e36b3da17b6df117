"""Benchmark: throughput of ``pipeline.prepare`` on the local runner with 1 and 2 worker
processes, as a ratio against tokenising the same text in a plain Python loop, same run; and
the same job with a Hugging Face fast tokenizer (tokenizer.kind = "hf") against the
SentencePiece one: the corpus's own SentencePiece model converted to tokenizer.json (the same
ids, so the same corpus: the cost of the HF code path alone) and a WordPiece vocabulary of the
same size trained on the same text (a BERT-style public vocabulary).

    .venv/bin/python bench/prepare.py [--mb 8] [--files 8] [--runs 3]

The corpus is real prose (Python standard-library docstrings) repeated to about --mb MiB over
--files plain-text files. The tokenizer is trained once up front and passed to every prepare
run, so the figures are reading + tokenising + splitting + shuffling + writing Parquet; the
loop baseline is ``sp.encode`` over the already-loaded documents (no I/O at all), i.e. the
single-core tokenizer ceiling that the pipeline's per-worker throughput is compared to. The
loop and the 1- and 2-worker jobs run --runs interleaved rounds (median reported); a job with
one local worker runs it in the launcher process (runners.one_worker_in_process).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline.prepare import run  # noqa: E402
from pipeline.sources import FileReport, read_file, stdlib_sources  # noqa: E402
from trainer.tokenizer import (  # noqa: E402
    ROLE_NAMES,
    SPECIAL_TOKENS,
    HFTokenizer,
    load_tokenizer,
)
from trainer.tools.hf.fast_tokenizer import (  # noqa: E402
    sentencepiece_json,
    write_tokenizer_files,
)

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


def wordpiece_folder(folder: str, docs: list[str], vocab_size: int) -> None:
    """A BERT-style WordPiece tokenizer trained on ``docs`` (tokenizer.json and
    special_tokens_map.json): what a public BERT MLM's folder holds."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(docs, trainers.WordPieceTrainer(vocab_size=vocab_size,
                                                            special_tokens=specials))
    os.makedirs(folder)
    tok.save(os.path.join(folder, "tokenizer.json"))
    with open(os.path.join(folder, "special_tokens_map.json"), "w") as f:
        f.write('{"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", '
                '"sep_token": "[SEP]", "mask_token": "[MASK]"}')


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
    parser.add_argument("--runs", type=int, default=3,
                        help="interleaved rounds of the loop and the local jobs (median)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        inputs = os.path.join(tmp, "inputs")
        os.makedirs(inputs)
        docs = make_corpus(inputs, args.mb, args.files)

        # Train the tokenizer once (not timed), then reuse it everywhere.
        _, m0 = prepare(inputs, os.path.join(tmp, "c0"), "--direct_num_workers=2")
        model = os.path.join(tmp, "c0", "tokenizer.model")
        sp = load_tokenizer(model)

        # --runs rounds of the loop and the two local jobs, interleaved so that a busy spell
        # of the machine weighs on all of them; each row is its median round.
        timed: dict[str, list[float]] = {}
        for r in range(args.runs):
            start = time.perf_counter()
            loop_tokens = sum(len(sp.encode(d)) for d in docs)
            timed.setdefault("python loop, sp.encode only (1 core)", []).append(
                time.perf_counter() - start)
            assert loop_tokens == m0["num_tokens"], (loop_tokens, m0["num_tokens"])
            for workers, name in ((1, "prepare, 1 worker (runs in the launcher)"),
                                  (2, "prepare, LocalRunner, 2 worker processes")):
                secs, m = prepare(inputs, os.path.join(tmp, f"c{workers}_{r}"), "--set",
                                  f"tokenizer.model={model}", f"--direct_num_workers={workers}")
                assert m["num_tokens"] == loop_tokens
                timed.setdefault(name, []).append(secs)
        rows = [(name, statistics.median(secs)) for name, secs in timed.items()]
        loop_s = rows[0][1]
        # The same job on dask.distributed (pipeline/dask_runner.py): its own 2-process
        # loopback cluster, started and stopped inside the timed call.
        secs, m = prepare(inputs, os.path.join(tmp, "cdask"), "--set",
                          f"tokenizer.model={model}", "--runner", "DaskRunner",
                          "--dask_workers", "2")
        assert m["num_tokens"] == loop_tokens
        rows.append(("prepare, DaskRunner, 2 worker processes", secs))

        # tokenizer.kind = "hf": the same text and job with fast tokenizers.
        spj, wp = os.path.join(tmp, "sp-json"), os.path.join(tmp, "wordpiece")
        os.makedirs(spj)
        write_tokenizer_files(spj, sentencepiece_json(model, False),
                              {f"{r}_token": t for r, t in zip(ROLE_NAMES, SPECIAL_TOKENS,
                                                               strict=True)}, 512, False)
        wordpiece_folder(wp, docs, m0["tokenizer"]["vocab_size"])
        hf_rows, hf_tokens = {}, {}
        for label, folder in (("SentencePiece as tokenizer.json", spj), ("WordPiece", wp)):
            hf = HFTokenizer.from_path(folder)
            start = time.perf_counter()
            hf_tokens[label] = sum(len(hf.encode(d)) for d in docs)
            rows_here = [(f"python loop, HF {label} (1 core)", time.perf_counter() - start)]
            for workers in (1, 2):
                secs, m = prepare(inputs, os.path.join(tmp, f"hf{len(hf_rows)}{workers}"),
                                  "--set", "tokenizer.kind=hf", "--set",
                                  f"tokenizer.model={folder}", "--set",
                                  f"tokenizer.vocab_size={hf.get_piece_size()}",
                                  f"--direct_num_workers={workers}")
                assert m["num_tokens"] == hf_tokens[label], (m["num_tokens"], hf_tokens)
                rows_here.append((f"prepare, HF {label}, {workers} worker(s)", secs))
            hf_rows[label] = rows_here
        assert hf_tokens["SentencePiece as tokenizer.json"] == loop_tokens  # the same ids

    mib = sum(len(d.encode()) for d in docs) / 2**20
    print(f"corpus: {mib:.1f} MiB of text, {len(docs):,} documents, {loop_tokens:,} tokens, "
          f"{args.files} files; {os.cpu_count()} cores; the first three rows: median of "
          f"{args.runs} interleaved rounds")
    print(f"{'':48s} {'seconds':>8s} {'tokens/s':>12s} {'vs loop':>8s}  rounds")
    for name, secs in rows:
        spread = ", ".join(f"{t:.2f}" for t in timed.get(name, []))
        print(f"{name:48s} {secs:8.2f} {loop_tokens / secs:12,.0f} {loop_s / secs:8.2f}x  "
              f"{spread}")
    for label, hf_here in hf_rows.items():
        print(f"\ntokenizer.kind = hf, {label}: {hf_tokens[label]:,} tokens")
        print(f"{'':58s} {'seconds':>8s} {'MiB/s':>8s} {'vs SentencePiece':>17s}")
        for (name, secs), (_, sp_secs) in zip(hf_here, rows[:3], strict=True):
            print(f"{name:58s} {secs:8.2f} {mib / secs:8.2f} {sp_secs / secs:16.2f}x")


if __name__ == "__main__":
    main()
