"""What every run of one ``fast-electra finetune`` invocation shares: the pre-trained
encoder and its tokenizer (Pretrained), and the task's files read and encoded once (TaskFiles,
TaskData), with their sha256 so a finished run is recognised.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import sentencepiece as spm

from trainer.data.corpus_shards import CorpusShards
from trainer.data.manifest import MANIFEST
from trainer.digest import sha256_file
from trainer.errors import UserError
from trainer.model.encoder import Encoder
from trainer.model.encoder_config import EncoderConfig
from trainer.pretrained import (
    DISCRIMINATOR_KINDS,
    GENERATOR_KINDS,
    checkpoint_config,
    discriminator_config,
    generator_config,
    load_discriminator,
    load_generator,
    read_meta,
    resolve_checkpoint,
)
from trainer.tokenizer import HFTokenizer, load_text_tokenizer
from trainer.tools.finetune.config import (
    FinetuneConfig,
    TaskConfig,
)
from trainer.tools.finetune.data import EncodedData, encode, label_names_from, read_rows


@dataclass
class Pretrained:
    """The checkpoint's encoder (None with --from-scratch), its config and tokenizer: the
    discriminator's where the checkpoint holds one, else (an ``mlm`` run, e.g. the aux) the
    generator's."""

    path: str
    encoder_cfg: EncoderConfig
    encoder: Encoder | None
    tokenizer_path: str
    sp: spm.SentencePieceProcessor | HFTokenizer


def open_pretrained(checkpoint: str, tokenizer: str | None, from_scratch: bool) -> Pretrained:
    path = resolve_checkpoint(checkpoint)
    # A discriminator where the checkpoint holds one; an MLM run's (the aux's) own encoder else.
    generator_only = read_meta(path, "encoder", (*DISCRIMINATOR_KINDS, *GENERATOR_KINDS)
                               )["model_kind"] not in DISCRIMINATOR_KINDS
    meta = (read_meta(path, "generator", GENERATOR_KINDS) if generator_only
            else read_meta(path, "discriminator", DISCRIMINATOR_KINDS))
    run_cfg = checkpoint_config(meta)
    if tokenizer is None:
        corpus_dir = run_cfg.data.corpus_dir
        if not os.path.isfile(os.path.join(corpus_dir, MANIFEST)):
            raise UserError(f"the checkpoint's corpus {corpus_dir!r} (its data.corpus_dir, "
                            "relative to where it was trained) has no manifest; pass "
                            "--tokenizer PATH to the corpus's tokenizer.model (or, for a "
                            "corpus prepared with tokenizer.kind = 'hf', its folder)")
        corpus = CorpusShards(corpus_dir)
        tokenizer, sp = corpus.tokenizer_path, corpus.tokenizer()
    else:
        sp = load_text_tokenizer(tokenizer, "sentencepiece" if tokenizer.endswith(".model")
                                 else "hf")
    enc_cfg = generator_config(meta) if generator_only else discriminator_config(meta)
    if sp.get_piece_size() != enc_cfg.vocab_size:
        raise UserError(f"tokenizer {tokenizer} has {sp.get_piece_size()} pieces but the "
                        f"checkpoint's model has a vocabulary of {enc_cfg.vocab_size}; give the "
                        "tokenizer of the corpus the checkpoint was trained on (--tokenizer)")
    encoder = None if from_scratch else (load_generator(path) if generator_only
                                         else load_discriminator(path)).encoder
    if encoder is not None:
        encoder.requires_grad_(True)  # load_generator freezes the aux; here it is fine-tuned
    return Pretrained(path, enc_cfg, encoder, tokenizer, sp)


@dataclass
class TaskData:
    label_names: list[str]
    train: EncodedData
    dev: EncodedData
    test: EncodedData | None
    fingerprint: dict
    """Absolute path and sha256 of every file: what makes a finished run the same run."""


class TaskFiles:
    """The train/dev/test rows, read once, tokenized once per max_seq_len."""

    def __init__(self, task: TaskConfig, train: str, dev: str, test: str | None):
        self.task = task
        self.rows = {"train": read_rows(train, task), "dev": read_rows(dev, task)}
        if test:
            self.rows["test"] = read_rows(test, task, require_label=False)
        self.label_names = label_names_from(self.rows["train"], task)
        self.fingerprint = {name: {"path": os.path.abspath(p), "sha256": sha256_file(p)}
                            for name, p in (("train", train), ("dev", dev), ("test", test)) if p}
        self._encoded: dict[int, TaskData] = {}

    def encoded(self, sp: spm.SentencePieceProcessor, max_seq_len: int) -> TaskData:
        if max_seq_len not in self._encoded:
            splits = {name: encode(rows, self.task, self.label_names, sp, max_seq_len,
                                   labelled=name != "test")
                      for name, rows in self.rows.items()}
            for name, data in splits.items():
                if data.truncated:
                    print(f"finetune: {data.truncated} of {len(data)} {name} examples truncated "
                          f"to {max_seq_len} tokens", flush=True)
            self._encoded[max_seq_len] = TaskData(self.label_names, splits["train"],
                                                  splits["dev"], splits.get("test"),
                                                  self.fingerprint)
        return self._encoded[max_seq_len]


def effective_max_seq_len(ft: FinetuneConfig, enc_cfg: EncoderConfig) -> int:
    if ft.max_seq_len > enc_cfg.max_seq_len:
        raise UserError(f"finetune.max_seq_len = {ft.max_seq_len} exceeds the checkpoint's "
                        f"data.max_seq_len = {enc_cfg.max_seq_len}; set it to at most that (or 0)")
    return ft.max_seq_len or enc_cfg.max_seq_len
