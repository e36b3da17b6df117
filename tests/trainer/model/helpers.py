"""Shared by the tests of trainer/model/: a tiny encoder config, its four variants (post / pre
LN x relative / absolute positions), random token ids.
"""

import dataclasses

import torch

from trainer.model.encoder_config import EncoderConfig
from trainer.tokenizer import NUM_SPECIAL

TINY = EncoderConfig(vocab_size=60, num_layers=2, hidden_size=32, num_heads=4, ffn_size=64,
                     rel_num_buckets=8, rel_max_distance=16, max_seq_len=32)
VARIANTS = {
    "post-relative": TINY,
    "pre-relative": dataclasses.replace(TINY, layer_norm="pre"),
    "post-absolute": dataclasses.replace(TINY, position="absolute"),
    "pre-absolute": dataclasses.replace(TINY, position="absolute", layer_norm="pre"),
}


def random_ids(B, T, vocab=TINY.vocab_size, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(NUM_SPECIAL, vocab, (B, T), generator=g)
