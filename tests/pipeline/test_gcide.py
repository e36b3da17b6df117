"""The English pre-training corpus (pipeline.gcide): the rules on a small dictd dictionary written
here, each with the wrong rule it would catch, and the real dict-gcide build pinned (size,
determinism, no shared word run with the real fine-tuning tasks)."""

from __future__ import annotations

import gzip
import os

import pytest

from pipeline.gcide import GCIDE_DIR, NGRAM, build, clean, main, ngrams
from tests.helpers import need_file

_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

AARDVARK = """aardvark \\aard"vark`\\ ([aum]rd"v[aum]rk`), n. [D., earth-pig.]
   (Zool.)
   An edentate mammal, of the genus {Orycteropus}, somewhat
   resembling a pig, common in some parts of Southern Africa.
   [1913 Webster]

   Syn: Syn. --ant bear, anteater, {Orycteropus afer}
        [1913 Webster WordNet 1.5]
"""
LARID = """Larine \\La"rine\\, a. (Zool.)
   Of or pertaining to the Gull family ({Larid[ae]}), long
   winged sea birds of every coast. [Obs.]
   [1913 Webster]
"""
WORDNET_ONLY = """Lari \\Lari\\ prop. n.
   A suborder of birds including the gulls; terns; jaegers; and
   skimmers of the northern seas and coasts.

   Syn: suborder Lari.
        [WordNet 1.5]
"""
UNTAGGED = """10th adj.
   1. coming next after the ninth in a series of ten or more
      things counted in order
"""
SHORT = """Tuz \\Tuz\\, n. A tuft of hair.
   [1913 Webster]
"""
TASK_TEXT = "a burrowing animal that eats ants and termites with its long sticky tongue"
OVERLAPPING = f"""Antbear \\Ant"bear`\\, n.
   The great anteater, {TASK_TEXT}, of South America.
   [1913 Webster]
"""


def b64(n: int) -> str:
    out = ""
    while True:
        out = _B64[n % 64] + out
        n //= 64
        if not n:
            return out


def write_dictd(folder, entries: list[tuple[list[str], str]]) -> str:
    """A dictd database: each entry's headwords point at its text in gcide.dict.dz."""
    os.makedirs(folder, exist_ok=True)
    data, index = b"", ["00-database-short\tA\tB"]
    for headwords, text in entries:
        raw = text.encode("utf-8")
        index += [f"{h}\t{b64(len(data))}\t{b64(len(raw))}" for h in headwords]
        data += raw
    with gzip.open(os.path.join(folder, "gcide.dict.dz"), "wb") as f:
        f.write(data)
    with open(os.path.join(folder, "gcide.index"), "w", encoding="utf-8") as f:
        f.write("\n".join(sorted(index)) + "\n")
    return str(folder)


def read_docs(out_dir) -> list[str]:
    with open(os.path.join(out_dir, "gcide.txt"), encoding="utf-8") as f:
        return f.read().strip("\n").split("\n\n")


@pytest.fixture
def small(tmp_path):
    src = write_dictd(tmp_path / "src", [
        (["aardvark", "Aard-vark"], AARDVARK), (["Larine"], LARID), (["Lari"], WORDNET_ONLY),
        (["10th"], UNTAGGED), (["Tuz"], SHORT), (["Antbear"], OVERLAPPING)])
    task = tmp_path / "task"
    task.mkdir()
    (task / "dev.tsv").write_text(f"sentence\tlabel\n{TASK_TEXT}\tanimal\n")
    return src, str(task)


def test_markup_is_removed_and_only_webster_text_is_kept(tmp_path, small):
    src, task = small
    counts = build(str(tmp_path / "out"), src, exclude=(task,), max_bytes=10_000)
    docs = read_docs(tmp_path / "out")
    # Catches: pronunciations, etymologies, braces or character codes left in ([aum], {..}).
    assert docs == [
        "aardvark, n. (Zool.) An edentate mammal, of the genus Orycteropus, somewhat "
        "resembling a pig, common in some parts of Southern Africa.",
        "Larine, a. (Zool.) Of or pertaining to the Gull family (Laridae), long winged sea "
        "birds of every coast."]
    # Catches: a WordNet block kept inside a Webster entry (the Syn: line), an entry credited to
    # WordNet alone or to no one (10th), an entry under min_words (Tuz), an entry sharing NGRAM
    # words with an excluded text (Antbear), or a span listed twice by two headwords.
    assert counts == {"entries": 4, "short": 1, "overlapping": 1, "documents": 2,
                      "text_bytes": sum(len(d.encode()) for d in docs) + 3}


def test_without_exclude_the_overlapping_entry_is_kept(tmp_path, small):
    # The negative control of the exclusion above: the same build without --exclude keeps it.
    src, _ = small
    build(str(tmp_path / "out"), src, max_bytes=10_000)
    docs = read_docs(tmp_path / "out")
    assert any(TASK_TEXT in d for d in docs)
    assert ngrams(TASK_TEXT) & ngrams(" ".join(docs))


def test_sample_is_by_hash_and_written_in_dictionary_order(tmp_path):
    entries = [([f"w{i:03d}"], f"Word{i:03d}, n. entry number {i} of a long list of words "
                "in this dictionary.\n   [1913 Webster]\n") for i in range(200)]
    src = write_dictd(tmp_path / "src", entries)
    build(str(tmp_path / "a"), src, max_bytes=2_000)
    docs = read_docs(tmp_path / "a")
    # Catches: a prefix of the alphabet instead of a spread (the first 2,000 bytes of entries
    # would be Word000..Word024), and output in hash order rather than dictionary order.
    assert 20 <= len(docs) <= 30
    numbers = [int(d[4:7]) for d in docs]
    assert numbers == sorted(numbers) and numbers[-1] > 100
    assert numbers != list(range(len(numbers)))
    # Deterministic: a second build writes the same bytes.
    build(str(tmp_path / "b"), src, max_bytes=2_000)
    assert read_docs(tmp_path / "b") == docs


def test_clean_keeps_words_around_codes_and_drops_notes():
    assert clean("Larid[ae] and c[oe]lum, [Obs.] faith [R.]") == "Laridae and coelum, faith"
    assert clean("Caf['e], n. [F.] A coffee house.") == "Cafe, n. A coffee house."


def run_main(capsys, *argv: str) -> tuple[int, str]:
    rc = main(list(argv))
    return rc, capsys.readouterr().err


def test_cli_refuses_a_missing_dictionary_or_exclude(tmp_path, capsys, small):
    rc, err = run_main(capsys, str(tmp_path / "o"), "--source", str(tmp_path / "none"))
    assert rc == 2 and "gcide.index not found" in err and "apt-get install dict-gcide" in err
    assert "Traceback" not in err and not (tmp_path / "o").exists()
    src, _ = small
    rc, err = run_main(capsys, str(tmp_path / "o"), "--source", src,
                       "--exclude", str(tmp_path / "no-task"))
    assert rc == 2 and "--exclude" in err and "no-task" in err
    assert not (tmp_path / "o").exists()


def test_real_gcide_corpus_size_determinism_and_no_task_overlap(tmp_path):
    need_file(os.path.join(GCIDE_DIR, "gcide.dict.dz"), "dict-gcide")
    need_file("/usr/share/wordnet/data.noun", "wordnet-base")
    need_file("/usr/share/games/fortunes/computers", "fortunes")
    from trainer.tools.finetune.real_tasks import fortunes_task, wordnet_task

    tasks = [str(tmp_path / "wordnet"), str(tmp_path / "fortunes")]
    wordnet_task(tasks[0])
    fortunes_task(tasks[1])
    counts = build(str(tmp_path / "a"), exclude=tuple(tasks))
    assert 7_000 <= counts["documents"] <= 7_600, counts
    assert 1_800_000 <= counts["text_bytes"] <= 1_810_000
    assert counts["overlapping"] > 0  # the exclusion had something to do
    docs = read_docs(tmp_path / "a")
    corpus = set().union(*(ngrams(d) for d in docs))
    for folder in tasks:
        for split in ("train", "dev"):
            with open(os.path.join(folder, f"{split}.tsv"), encoding="utf-8") as f:
                texts = [line.split("\t")[0] for line in f.read().splitlines()[1:]]
            assert not any(ngrams(t) & corpus for t in texts), f"{folder} {split}: {NGRAM}-gram"
    assert not any("WordNet" in d or "[" in d or "{" in d for d in docs)
    build(str(tmp_path / "b"), exclude=tuple(tasks))
    for name in ("gcide.txt", "source.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
