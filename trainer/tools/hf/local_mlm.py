"""A small BERT masked LM with its own WordPiece tokenizer, built and trained on a prepared
corpus's text: a stand-in, on a machine without network, for the public checkpoint a user
would take from a model hub.

    fast-electra hf local-mlm shards/tiny/corpus hf/tiny-bert --config configs/tiny_bert.toml

Writes a ``save_pretrained`` folder (``BertForMaskedLM`` + ``BertTokenizerFast``): the
tokenizer is a lower-casing WordPiece vocabulary of tokenizer.vocab_size trained on the
corpus's text (decoded from its sequences) with BERT's layout of the special tokens ([PAD] 0,
[unused*], then [UNK] [CLS] [SEP] [MASK]), so that the import has to renumber it; the model has
the [aux] shape of the config with absolute positions, exact GELU and LayerNorm eps 1e-5, and
is trained with BERT's masking (15%: 80% [MASK], 10% random, 10% kept) for ``--steps`` AdamW
steps. Deterministic on CPU for a given seed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from trainer.config.run import RunConfig
from trainer.data.corpus_shards import CorpusShards
from trainer.errors import UserError
from trainer.model.encoder_config import EncoderConfig
from trainer.tools.hf.common import require_transformers

UNUSED = 8  # [unused*] rows between [PAD] and [UNK], as in BERT's vocabulary (it has 99)
BERT_LAYOUT = ["[PAD]", *(f"[unused{i}]" for i in range(UNUSED)), "[UNK]", "[CLS]", "[SEP]",
               "[MASK]"]


def corpus_text(corpus_dir: str) -> list[str]:
    """The corpus's sequences as text (their SentencePiece pieces decoded)."""
    corpus = CorpusShards(corpus_dir)
    sp = corpus.tokenizer()
    return [sp.decode(r.input_ids[1:-1].tolist()) for r in corpus.rows()]


def wordpiece(texts: list[str], vocab_size: int, transformers,
              specials: list[str] = BERT_LAYOUT):
    """A lower-casing BERT WordPiece tokenizer of exactly ``vocab_size`` tokens trained on
    ``texts``; ``specials`` take the first ids, in their order."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size,
                                                             special_tokens=specials))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    if tok.get_vocab_size() != vocab_size:
        raise UserError(f"the corpus's text gives a WordPiece vocabulary of "
                        f"{tok.get_vocab_size()} tokens, not tokenizer.vocab_size = "
                        f"{vocab_size}; set --set tokenizer.vocab_size={tok.get_vocab_size()}")
    return transformers.BertTokenizerFast(
        tokenizer_object=tok, do_lower_case=True, pad_token="[PAD]", unk_token="[UNK]",
        cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


@dataclass(frozen=True)
class LocalMLMOptions:
    """What ``fast-electra hf local-mlm`` builds and how it trains it; the model's shape and
    the vocabulary size come from the run config."""

    corpus_dir: str
    """The prepared corpus whose text the tokenizer and the model are trained on."""
    out_dir: str
    """The folder to write (save_pretrained); it must not exist or be empty."""
    steps: int
    """AdamW steps."""
    batch_size: int = 64
    """Sequences per step."""
    lr: float = 1e-3
    """Peak learning rate (linear warm-up over a tenth of the steps, then linear decay)."""
    seed: int = 0
    """Seeds the initialisation, the masking and the order of the sequences."""


def build_local_mlm(opts: LocalMLMOptions, cfg: RunConfig) -> str:
    corpus_dir, out_dir, steps = opts.corpus_dir, opts.out_dir, opts.steps
    batch_size, lr, seed = opts.batch_size, opts.lr, opts.seed
    transformers = require_transformers()
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise UserError(f"{out_dir} exists and is not empty; give a new folder")
    texts = corpus_text(corpus_dir)
    tok = wordpiece(texts, cfg.tokenizer.vocab_size, transformers)
    enc = EncoderConfig.aux(cfg)
    config = transformers.BertConfig(
        vocab_size=len(tok), hidden_size=enc.hidden_size, num_hidden_layers=enc.num_layers,
        num_attention_heads=enc.num_heads, intermediate_size=enc.ffn_size, hidden_act="gelu",
        max_position_embeddings=enc.max_seq_len, layer_norm_eps=enc.layer_norm_eps,
        pad_token_id=tok.pad_token_id, type_vocab_size=2)
    torch.manual_seed(seed)
    model = transformers.BertForMaskedLM(config)
    collate = transformers.DataCollatorForLanguageModeling(tok, mlm_probability=0.15, seed=seed)
    encoded = tok(texts, truncation=True, max_length=enc.max_seq_len)["input_ids"]
    rows = [{"input_ids": ids} for ids in encoded]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / (steps // 10 + 1))
                                              * max(0.0, 1 - s / steps))
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))
    model.train()
    for step in range(steps):
        idx = order[(step * batch_size + torch.arange(batch_size)) % len(rows)]
        batch = collate([rows[i] for i in idx.tolist()])
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            print(f"local-mlm: step {step + 1}/{steps} | loss {loss.item():.4f}", flush=True)
    tmp = f"{out_dir.rstrip('/')}.tmp-{os.getpid()}"
    model.eval().save_pretrained(tmp)
    tok.save_pretrained(tmp)
    os.makedirs(os.path.dirname(os.path.abspath(out_dir)), exist_ok=True)
    if os.path.isdir(out_dir):
        os.rmdir(out_dir)  # empty (checked above)
    os.replace(tmp, out_dir)
    return out_dir
