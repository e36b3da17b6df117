"""An English pre-training corpus built offline: the Webster 1913 entries of GCIDE (the GNU
Collaborative International Dictionary of English, Debian package ``dict-gcide``), one entry per
document, as a plain-text file that ``prepare`` reads (``data.format = "text"``).

    fast-electra corpus-data data/gcide --exclude data/wordnet --exclude data/fortunes

Why a dictionary: it is general English prose about every topic (animals, food, trades,
politics, music), written by people, on every machine that can install a Debian package. The
default corpus, the standard library's docstrings, is about software only.

What is kept of the dictionary: entries credited to Webster's 1913 edition or its supplement,
and of those, the blocks (senses, notes) not credited elsewhere. Blocks credited to WordNet, or
revised by the GCIDE editor (``PJC``, who merged WordNet glosses in), are dropped, and so is
every entry that shares a run of ``NGRAM`` words with a text under ``--exclude`` (the
fine-tuning tasks' files): pre-training text must not contain the evaluation's sentences. Markup
is removed: pronunciations, etymologies and other bracketed notes, ``{}`` cross-reference
braces, and character codes (``[ae]`` -> ``ae``).

The output is a deterministic sample of the entries of at least ``--min-words`` words: entries
are taken in the order of the sha256 of their text (an even spread over the alphabet) until
``--max-bytes`` of text, then written in dictionary order, separated by blank lines. The default
size gives the default corpus's number of sequences (about 9,000 of at most 128 tokens), so that
the demo's budgets mean the same number of passes over either. A folder gets ``gcide.txt`` and
``source.json`` (the dictionary's sha256, the options, the counts).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
from collections.abc import Iterator

from trainer.atomic import write_text_atomic
from trainer.cli import main_guard
from trainer.digest import sha256_bytes, sha256_file
from trainer.errors import UserError

GCIDE_DIR = "/usr/share/dictd"
NGRAM = 8
"""Shared word run that marks an entry as overlapping an excluded text (as in GPT-3's
decontamination, which used 13 on far longer documents; glosses are short)."""
MAX_BYTES = 1_800_000
"""Text kept by default: the default corpus's number of sequences (about 9,000)."""
MIN_WORDS = 8
"""Shorter entries (a bare cross-reference, a one-word gloss) are dropped by default."""

_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_DROP_SOURCES = ("WordNet", "PJC")
_KEEP_SOURCES = ("[1913 Webster]", "[Webster 1913 Suppl.]")
_CHAR_CODE = re.compile(r"\[(ae|oe|AE|OE)\]|\[[=^.`'\"~,]?([a-z])[a-z^~`'\"=]{0,4}\]")
_BRACKETED = re.compile(r"\[[^\[\]]*\]")
_HEADWORD_SPELLING = re.compile(r"\\[^\\\n]*\\")
_PRONUNCIATION = re.compile(r"^([^,()]+?) ?\([^()]*\)(?=,| )")
_BLANK_LINE = re.compile(r"\n\s*\n")
_SPACE = re.compile(r"\s+")
_WORD = re.compile(r"[a-z0-9]+")


class CorpusDataError(UserError):
    """The dictionary or an excluded file cannot be read; the message names it and the fix."""


def _b64(text: str) -> int:
    n = 0
    for c in text:
        n = n * 64 + _B64.index(c)
    return n


def clean(block: str) -> str:
    """One dictionary block as plain prose: markup removed, whitespace collapsed."""
    text = _CHAR_CODE.sub(lambda m: m.group(1) or m.group(2), block)
    text = _HEADWORD_SPELLING.sub(" ", text)
    while True:  # nested brackets (an etymology holding a code), innermost first
        shorter = _BRACKETED.sub(" ", text)
        if shorter == text:
            break
        text = shorter
    text = _SPACE.sub(" ", text.replace("{", "").replace("}", "")).strip()
    text = _PRONUNCIATION.sub(r"\1", text)
    return text.replace(" ,", ",").replace(" .", ".").replace(" ;", ";")


def entries(source: str = GCIDE_DIR) -> Iterator[str]:
    """The dictionary's entries as cleaned text, Webster 1913 blocks only, in index order.
    Several headwords that share one definition yield it once."""
    index_path, dict_path = (os.path.join(source, f"gcide.{ext}") for ext in ("index", "dict.dz"))
    for path in (index_path, dict_path):
        if not os.path.exists(path):
            raise CorpusDataError(f"{path} not found: the corpus is built from the Debian package "
                                  "dict-gcide; install it (apt-get install dict-gcide) or pass "
                                  "--source DIR where gcide.index and gcide.dict.dz are")
    with gzip.open(dict_path) as f:  # dictzip is gzip with random-access extras
        data = f.read()
    spans: list[tuple[int, int]] = []
    seen: set[tuple[int, int]] = set()
    with open(index_path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            fields = line.rstrip("\n").split("\t")
            if len(fields) < 3:
                raise CorpusDataError(f"{index_path}:{line_no}: not a dictd index line "
                                      "(headword, offset, length); reinstall dict-gcide")
            if fields[0].startswith("00-database-"):
                continue
            span = (_b64(fields[1]), _b64(fields[2]))
            if span not in seen:
                seen.add(span)
                spans.append(span)
    for start, length in sorted(spans):
        blocks = _BLANK_LINE.split(data[start:start + length].decode("utf-8", "replace"))
        if not any(s in b for b in blocks for s in _KEEP_SOURCES):
            continue  # an entry of another source, whatever its blocks say
        kept = [clean(b) for b in blocks if not any(s in b for s in _DROP_SOURCES)]
        text = " ".join(k for k in kept if k)
        if text:
            yield text


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def ngrams(text: str, n: int = NGRAM) -> set[tuple[str, ...]]:
    return word_runs(words(text), n)


def word_runs(w: list[str], n: int = NGRAM) -> set[tuple[str, ...]]:
    return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}


def excluded_ngrams(paths: list[str]) -> set[tuple[str, ...]]:
    """Every NGRAM-word run of the texts under ``paths``: files (TSV: the first column of each
    line) or folders (their .tsv and .txt files)."""
    grams: set[tuple[str, ...]] = set()
    for path in paths:
        if os.path.isdir(path):
            files = sorted(os.path.join(path, f) for f in os.listdir(path)
                           if f.endswith((".tsv", ".txt")))
        else:
            files = [path]
        if not files or not all(os.path.isfile(f) for f in files):
            raise CorpusDataError(f"--exclude {path}: no such file, or a folder without .tsv or "
                                  ".txt files; pass the fine-tuning tasks' folders (built by "
                                  "fast-electra finetune-data)")
        for file in files:
            with open(file, encoding="utf-8", errors="replace") as f:
                for line in f:
                    grams |= ngrams(line.split("\t", 1)[0])
    return grams


def build(out_dir: str, source: str = GCIDE_DIR, exclude: tuple[str, ...] = (),
          max_bytes: int = MAX_BYTES, min_words: int = MIN_WORDS) -> dict:
    """Write ``out_dir``/gcide.txt and source.json; return the counts."""
    if max_bytes <= 0 or min_words < 1:
        raise CorpusDataError("--max-bytes must be > 0 and --min-words >= 1")
    banned = excluded_ngrams(list(exclude))
    counts = {"entries": 0, "short": 0, "overlapping": 0}
    candidates = []
    for order, text in enumerate(entries(source)):
        counts["entries"] += 1
        w = words(text)
        if len(w) < min_words:
            counts["short"] += 1
        elif banned and not banned.isdisjoint(word_runs(w)):
            counts["overlapping"] += 1
        else:
            raw = text.encode("utf-8")
            candidates.append((sha256_bytes(raw), order, text, len(raw)))
    chosen, size = [], 0
    for _, order, text, nbytes in sorted(candidates):
        if size >= max_bytes:
            break
        chosen.append((order, text))
        size += nbytes + 2
    chosen.sort()
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "gcide.txt")
    write_text_atomic(path, "\n\n".join(text for _, text in chosen) + "\n")
    counts.update(documents=len(chosen), text_bytes=os.path.getsize(path))
    meta = {"source": {"gcide.dict.dz": sha256_file(os.path.join(source, "gcide.dict.dz")),
                       "gcide.index": sha256_file(os.path.join(source, "gcide.index"))},
            "exclude": list(exclude), "ngram": NGRAM, "max_bytes": max_bytes,
            "min_words": min_words, "counts": counts}
    write_text_atomic(os.path.join(out_dir, "source.json"), json.dumps(meta, indent=2) + "\n")
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fast-electra corpus-data",
                                description=__doc__.split("\n\n")[0],
                                epilog="Then: fast-electra prepare --config "
                                       "configs/tiny_gcide.toml")
    p.add_argument("out_dir", help="where gcide.txt and source.json go")
    p.add_argument("--source", default=GCIDE_DIR,
                   help=f"folder of gcide.index and gcide.dict.dz (default {GCIDE_DIR})")
    p.add_argument("--exclude", action="append", default=[], metavar="PATH",
                   help=f"a file or folder of texts no entry may share {NGRAM} words in a row "
                        "with (repeatable; e.g. data/wordnet)")
    p.add_argument("--max-bytes", type=int, default=MAX_BYTES, help="text to keep")
    p.add_argument("--min-words", type=int, default=MIN_WORDS,
                   help="shorter entries are dropped")

    def go(argv):
        args = p.parse_args(argv)
        c = build(args.out_dir, args.source, tuple(args.exclude), args.max_bytes,
                  args.min_words)
        print(f"corpus-data: {c['documents']:,} of {c['entries']:,} entries "
              f"({c['text_bytes']:,} bytes; {c['short']:,} under {args.min_words} words, "
              f"{c['overlapping']:,} sharing {NGRAM} words with --exclude) -> "
              f"{os.path.join(args.out_dir, 'gcide.txt')}")

    return main_guard(go, argv)


if __name__ == "__main__":
    raise SystemExit(main())
