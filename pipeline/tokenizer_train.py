"""Train the project's SentencePiece BPE tokenizer from the raw inputs (run by ``prepare``).

SentencePiece trains on one machine, so this runs in the launcher before the Beam job. The
training text is a deterministic sample: the first lines of every input file, an equal share
each, up to ``tokenizer.train_max_sentences`` in all; the same inputs give the same model bytes.

    model_bytes = train_tokenizer([("a.txt", 1234)], TokenizerConfig(vocab_size=8000), data_cfg)
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator

import sentencepiece as spm

from pipeline.sources import FileReport, read_file
from trainer.config.sections import DataConfig, TokenizerConfig
from trainer.tokenizer import TRAINER_SPEC, TokenizerError, load_tokenizer_bytes

# SentencePiece skips longer lines; cutting them keeps their text in the sample.
_MAX_LINE_CHARS = 4096


def training_lines(files: list[tuple[str, int]], data: DataConfig,
                   max_lines: int) -> Iterator[str]:
    """Up to ``max_lines`` non-empty lines: an equal share from the start of every file."""
    per_file = max(1, math.ceil(max_lines / len(files)))
    total = 0
    for path, _size in files:
        taken = 0
        for doc in read_file(path, data.format, FileReport(path), data.text_field,
                             data.text_doc_split):
            for line in doc.text.splitlines():
                line = line.strip()
                while line and taken < per_file and total < max_lines:
                    yield line[:_MAX_LINE_CHARS]
                    line = line[_MAX_LINE_CHARS:]
                    taken += 1
                    total += 1
            if taken >= per_file or total >= max_lines:
                break


def train_tokenizer(files: list[tuple[str, int]], tok: TokenizerConfig,
                    data: DataConfig) -> bytes:
    """A serialized SentencePiece model trained on a sample of ``files``."""
    lines = list(training_lines(files, data, tok.train_max_sentences))
    if not lines:
        raise TokenizerError("cannot train a tokenizer: the inputs hold no text "
                             f"({len(files)} file(s), first {files[0][0]})")
    buffer = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines),
            model_writer=buffer,
            vocab_size=tok.vocab_size,
            character_coverage=tok.character_coverage,
            input_sentence_size=0,  # we sampled already; 0 = use every line given
            # One thread: SentencePiece's multi-threaded BPE merges are not guaranteed to
            # break ties in the same order, and identical re-runs are part of the contract.
            num_threads=1,
            minloglevel=2,
            **TRAINER_SPEC,
        )
    except RuntimeError as e:
        msg = str(e)
        if "Vocabulary size" in msg or "vocab_size" in msg:
            raise TokenizerError(
                f"the sample ({len(lines)} lines) is too small for tokenizer.vocab_size="
                f"{tok.vocab_size}: lower tokenizer.vocab_size or add input ({msg})") from None
        raise TokenizerError(f"SentencePiece training failed: {msg}") from None
    model = buffer.getvalue()
    load_tokenizer_bytes(model, "the trained tokenizer")  # prove it meets the contract
    return model
