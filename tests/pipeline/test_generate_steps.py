"""generate's composite transforms (pipeline/generate_steps.py), each run in-process in its own
TestPipeline and checked with Beam's assert_that against the model-free (uniform) RTD set the
``rtd_dir`` fixture wrote end to end: the same parts, entries and seals, byte for byte."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from apache_beam import Create, Map
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline.epoch_seal import EpochSealing
from pipeline.generate_steps import CorruptAndWrite, SealEpochs, ShuffleToParts
from pipeline.layout import Layout
from pipeline.runners import pipeline_options
from tests.helpers import IN_MEMORY
from trainer.config.load import load_config
from trainer.data.corpus_shards import CorpusShards
from trainer.data.order import unpermute
from trainer.data.rtd_format import epoch_dir, token_dtype
from trainer.data.sealed import PLAN, SEAL, plan_fingerprint

pytestmark = pytest.mark.usefixtures("one_thread")


def in_process() -> BeamTestPipeline:
    return BeamTestPipeline(options=pipeline_options(IN_MEMORY))


def setup(prepared, rtd_dir, out_dir):
    """The config of the fixture's set (writing to ``out_dir``), its corpus, layout, dtype."""
    cfg = load_config(rtd_dir / "config.toml", [f"generate.rtd_dir={out_dir}"])
    corpus = CorpusShards(str(prepared[0]))
    layout = Layout.plan(corpus.num_sequences, corpus.max_seq_len, cfg.generate.batch_tokens,
                         cfg.generate.part_rows)
    return cfg, corpus, layout, token_dtype(corpus.vocab_size)


def shuffled(p, cfg, corpus, layout, dtype, epoch):
    return (p | Create([(epoch, i) for i in range(len(corpus.files))])
              | ShuffleToParts(corpus.root, corpus.files, layout, cfg.generate.seed, dtype))


def part_content(rows) -> tuple:
    """A PartRows as comparable values: (epoch, part, [(seq_id, tokens)] in position order)."""
    _, seq_ids, lengths, tokens = rows.batch(0, len(rows))
    pieces = np.split(tokens, np.cumsum(lengths)[:-1])
    return rows.epoch, rows.part, [(int(s), t.tolist()) for s, t in zip(seq_ids, pieces,
                                                                        strict=True)]


def test_shuffle_to_parts_gives_each_part_its_rows_in_epoch_order(prepared, rtd_dir, tmp_path):
    cfg, corpus, layout, dtype = setup(prepared, rtd_dir, tmp_path)
    tokens = {r.seq_id: r.input_ids.tolist() for r in corpus.rows()}
    epoch, want = 1, []
    for part in range(layout.num_parts):
        lo, hi = layout.part_range(part)
        seq_ids = unpermute(np.arange(lo, hi), layout.num_sequences, cfg.generate.seed, epoch)
        want.append((epoch, part, [(int(s), tokens[int(s)]) for s in seq_ids]))
    assert layout.num_parts > 1
    with in_process() as p:
        assert_that(shuffled(p, cfg, corpus, layout, dtype, epoch) | Map(part_content),
                    equal_to(want))


def test_corrupt_and_write_writes_the_parts_of_the_end_to_end_run(prepared, rtd_dir, tmp_path):
    cfg, corpus, layout, dtype = setup(prepared, rtd_dir, tmp_path)
    manifest = json.loads((rtd_dir / "manifest.json").read_text())
    want = [f for f in manifest["files"] if f["epoch"] == 0]
    with in_process() as p:
        entries = (shuffled(p, cfg, corpus, layout, dtype, 0)
                   | CorruptAndWrite(cfg, layout, corpus.vocab_size, corpus.root, dtype))
        assert_that(entries, equal_to(want))
    for f in want:
        assert (tmp_path / f["name"]).read_bytes() == (rtd_dir / f["name"]).read_bytes()


def seal_run(rtd_dir, out_dir, want: list[dict]) -> None:
    """The fixture's part entries through SealEpochs into ``out_dir`` (holding its plan),
    asserting that the seals are ``want``."""
    manifest = json.loads((rtd_dir / "manifest.json").read_text())
    shutil.copy(rtd_dir / PLAN, out_dir / PLAN)
    sealing = EpochSealing(str(out_dir), manifest["layout"]["parts_per_epoch"],
                           plan_fingerprint(json.loads((rtd_dir / PLAN).read_text())))
    with in_process() as p:
        assert_that(p | Create(manifest["files"]) | SealEpochs(sealing), equal_to(want))


def test_seal_epochs_writes_one_seal_per_epoch(rtd_dir, tmp_path):
    names = [f"{epoch_dir(e)}/{SEAL}" for e in range(2)]
    seal_run(rtd_dir, tmp_path, [json.loads((rtd_dir / n).read_text()) for n in names])
    for n in names:
        assert (tmp_path / n).read_bytes() == (rtd_dir / n).read_bytes()


def test_seal_epochs_check_fails_on_a_wrong_seal(rtd_dir, tmp_path):
    """Negative control: the same run against seals with one row count off fails."""
    seals = [json.loads((rtd_dir / epoch_dir(e) / SEAL).read_text()) for e in range(2)]
    seals[1]["rows"] += 1
    with pytest.raises(Exception, match="Failed assert"):
        seal_run(rtd_dir, tmp_path, seals)
