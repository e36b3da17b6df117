"""``fast-electra finetune-data``: fine-tuning task files. The real tasks (labels written
by people) are real_tasks.py's; the corpus proxies built from a prepared corpus (see
continuation_task, order_task) are here:

    fast-electra finetune-data data/wordnet --task wordnet
    fast-electra finetune-data shards/tiny/corpus data/continuation [--train 2000 --dev 500]
    fast-electra finetune-data shards/tiny/corpus data/order --task order
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from trainer.atomic import write_text_atomic
from trainer.cli import main_guard
from trainer.data.corpus_shards import CorpusShards
from trainer.errors import UserError
from trainer.tools.finetune import real_tasks
from trainer.tools.finetune.data import TaskDataError


def corpus_texts(corpus_dir: str) -> dict[str, list[tuple[int, list[str], int]]]:
    """The corpus's sequences of >= 16 tokens as (doc_id, decoded halves, tokens in the second
    half) per split: every document goes wholly to train or to dev (doc_id % 5 == 0: dev), so
    dev texts are unseen in fine-tuning. continuation_task pairs the halves; order_task joins
    them."""

    corpus = CorpusShards(corpus_dir)
    sp = corpus.tokenizer()
    texts: dict[str, list[tuple[int, list[str], int]]] = {"train": [], "dev": []}
    for r in corpus.rows():
        body = r.input_ids[1:-1].tolist()  # without [CLS] / [SEP]
        if len(body) < 16:
            continue
        mid = len(body) // 2
        halves = [" ".join(sp.decode(x).split()) for x in (body[:mid], body[mid:])]
        texts["dev" if r.doc_id % 5 == 0 else "train"].append((r.doc_id, halves,
                                                                len(body) - mid))
    return texts


def _write_tsv(path: str, lines: list[str]) -> None:
    write_text_atomic(path, "\n".join(lines) + "\n")


def _pick(corpus_dir: str, pool: list, split: str, n: int, rng: np.random.Generator
          ) -> np.ndarray:
    if len(pool) < n:
        raise TaskDataError(f"{corpus_dir}: only {len(pool)} sequences of >= 16 tokens for "
                            f"the {split} split, {n} needed; ask for fewer examples")
    return rng.permutation(len(pool))[:n]


def continuation_task(corpus_dir: str, out_dir: str, num_train: int = 2000, num_dev: int = 500,
                      seed: int = 0) -> dict[str, str]:
    """Write ``train.tsv`` and ``dev.tsv`` of a sentence-pair task built from a prepared
    corpus: is ``sentence2`` the second half of the sequence whose first half is
    ``sentence1`` (label 1), or the second half of a sequence of another document (label 0)?
    The other half has the same number of tokens as the true one where the corpus has one
    (else the nearest): with any second half, "are the halves about as long?" alone scored
    72% on dev, a shortcut that says nothing about the text. Classes are balanced; train and
    dev come from disjoint documents. Returns {"train": path, "dev": path}."""
    texts = corpus_texts(corpus_dir)
    rng = np.random.default_rng(seed)
    paths = {}
    os.makedirs(out_dir, exist_ok=True)
    for split, n in (("train", num_train), ("dev", num_dev)):
        pool = texts[split]
        picked = _pick(corpus_dir, pool, split, n, rng)
        by_length: dict[int, list[int]] = {}
        for i, (_, _, length) in enumerate(pool):
            by_length.setdefault(length, []).append(i)
        lengths = np.array(sorted(by_length))
        lines = ["sentence1\tsentence2\tlabel"]
        for k in range(n):
            doc, (a, b), length = pool[picked[k]]
            label = int(k % 2 == 0)
            if not label:  # another document's second half, as long as the true one
                for want in lengths[np.argsort(np.abs(lengths - length), kind="stable")]:
                    others = [i for i in by_length[int(want)] if pool[i][0] != doc]
                    if others:
                        b = pool[others[int(rng.integers(len(others)))]][1][1]
                        break
            lines.append(f"{a}\t{b}\t{label}")
        paths[split] = os.path.join(out_dir, f"{split}.tsv")
        _write_tsv(paths[split], lines)
    return paths


ORDER_WINDOW_WORDS = 4


def order_task(corpus_dir: str, out_dir: str, num_train: int = 2000, num_dev: int = 500,
               seed: int = 0) -> dict[str, str]:
    """Write ``train.tsv`` and ``dev.tsv`` of a single-sentence acceptability task (a
    CoLA-like proxy) built from a prepared corpus: is ``sentence`` as written (label 1), or
    were ORDER_WINDOW_WORDS consecutive words of it shuffled (label 0; the shuffle always
    changes the text)? The same words either way, so only word order tells: what a
    replaced-token detector has to model. Classes are balanced; train and dev come from
    disjoint documents. Returns {"train": path, "dev": path}."""
    texts = corpus_texts(corpus_dir)
    rng = np.random.default_rng(seed)
    paths = {}
    os.makedirs(out_dir, exist_ok=True)
    w = ORDER_WINDOW_WORDS
    for split, n in (("train", num_train), ("dev", num_dev)):
        pool = []  # (words, the window starts a shuffle can change)
        for _, halves, _ in texts[split]:
            words = " ".join(halves).split(" ")
            starts = [i for i in range(len(words) - w + 1) if len(set(words[i:i + w])) > 1]
            if starts:
                pool.append((words, starts))
        picked = _pick(corpus_dir, pool, split, n, rng)
        lines = ["sentence\tlabel"]
        for k in range(n):
            words, starts = pool[picked[k]]
            words, label = list(words), int(k % 2 == 0)
            if not label:
                s = starts[int(rng.integers(len(starts)))]
                window = words[s:s + w]
                shuffled = window
                while shuffled == window:
                    shuffled = [window[i] for i in rng.permutation(w)]
                words[s:s + w] = shuffled
            lines.append(f"{' '.join(words)}\t{label}")
        paths[split] = os.path.join(out_dir, f"{split}.tsv")
        _write_tsv(paths[split], lines)
    return paths


TASKS = {"continuation": continuation_task, "order": order_task}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="fast-electra finetune-data",
        description="Fine-tuning task files. Real tasks (labels written by people), from "
        "Debian packages: fast-electra finetune-data OUT_DIR --task wordnet|fortunes "
        "[--source DIR]. " + real_tasks.__doc__.split("\n\n", 2)[2] + " Corpus proxies, from "
        "a prepared corpus: fast-electra finetune-data CORPUS_DIR OUT_DIR "
        "[--task continuation|order]. continuation: " + continuation_task.__doc__ +
        " order: " + order_task.__doc__)
    p.add_argument("dirs", nargs="+", metavar="[CORPUS_DIR] OUT_DIR",
                   help="a corpus task: the prepared corpus (e.g. shards/tiny/corpus) and "
                        "where train.tsv and dev.tsv go; a real task: only where they go")
    p.add_argument("--task", choices=sorted(TASKS) + sorted(real_tasks.REAL_TASKS),
                   default="continuation")
    p.add_argument("--source", help="a real task: the folder of its Debian package's files "
                   "(default: " + ", ".join(f"{k} {v[1]}" for k, v in
                                            sorted(real_tasks.REAL_TASKS.items())) + ")")
    p.add_argument("--train", type=int, default=2000, help="corpus task: training examples")
    p.add_argument("--dev", type=int, default=500, help="corpus task: dev examples")
    p.add_argument("--seed", type=int, default=0, help="corpus task: sampling seed")

    def go(argv):
        args = p.parse_args(argv)
        real = args.task in real_tasks.REAL_TASKS
        if len(args.dirs) != (1 if real else 2):
            raise UserError(f"--task {args.task} takes "
                            + ("one folder, OUT_DIR" if real else "CORPUS_DIR OUT_DIR")
                            + f"; got {len(args.dirs)}: {' '.join(args.dirs)}")
        if real:
            build, default = real_tasks.REAL_TASKS[args.task]
            paths = build(args.dirs[0], args.source or default)
        else:
            paths = TASKS[args.task](*args.dirs, args.train, args.dev, args.seed)
        counts = {}
        for split, path in paths.items():
            with open(path, encoding="utf-8") as f:
                counts[split] = sum(1 for _ in f) - 1  # less the header row
        print(f"{args.task} task: {counts['train']} train / {counts['dev']} dev examples -> "
              f"{paths['train']}, {paths['dev']}")

    return main_guard(go, argv)


if __name__ == "__main__":
    sys.exit(main())
