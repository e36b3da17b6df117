"""Shared by the tests of trainer/corruption/: the vocabulary, the aux's shape, batches (the
aux itself and one torch thread per test: conftest.py).

Statistical checks use fixed seeds (deterministic, so they cannot flake) and tolerances of
about 5 standard deviations or more (so a change of hash or seed would not break them either).
Each goodness-of-fit test has a power check: the same samples fail against the distribution at
a slightly wrong temperature (or weight), so the test can tell the two apart.
"""

import torch
import torch.nn.functional as F

from trainer.config.sections import CorruptionConfig
from trainer.model.encoder_config import EncoderConfig
from trainer.tokenizer import CLS_ID, NUM_SPECIAL, PAD_ID, SEP_ID

V = 300
AUX_CFG = EncoderConfig(vocab_size=V, num_layers=2, hidden_size=32, num_heads=4, ffn_size=64,
                        rel_num_buckets=8, rel_max_distance=16, max_seq_len=64)


def make_batch(B: int, T: int, seed: int = 0, min_len: int = 4) -> tuple[torch.Tensor,
                                                                         torch.Tensor]:
    """Left-aligned [CLS] tokens [SEP] [PAD]...: ids (B, T) and attention mask (B, T)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((B, T), PAD_ID)
    for b in range(B):
        L = int(torch.randint(min_len, T + 1, (), generator=g))
        ids[b, :L] = torch.randint(NUM_SPECIAL, V, (L,), generator=g)
        ids[b, 0], ids[b, L - 1] = CLS_ID, SEP_ID
    return ids, ids != PAD_ID


def cfg(**kw) -> CorruptionConfig:
    return CorruptionConfig(**kw)


def pad_to(ids: torch.Tensor, T: int) -> torch.Tensor:
    return F.pad(ids, (0, T - ids.shape[1]), value=PAD_ID)
