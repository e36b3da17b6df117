"""Corruption for replaced token detection, one implementation for offline (pipeline.generate)
and online (the joint and fast-online modes) use (imports config/, model/, tokenizer.py).

    keyed_rng.py       counter-based randomness keyed by (seed, epoch, seq_id, position)
    batch.py           KeyedBatch: a batch's token rows and the keys of their draws
    schedules.py       curriculum schedules T(u)
    masking.py         which positions are corrupted; drop_token
    distributions.py   replacement distributions as log-probabilities
    augmentations.py   what the schedule value asks of each augmentation; config checks
    sampling.py        keyed inverse-CDF draws; closed forms of the model-free samplers
    corrupt.py         corrupt_batch, the entry point, and the aux precision rule

``trainer.corruption.sample_tokens`` (the one sampler every stage uses) is
sampling.sample_tokens.
"""

from trainer.corruption.sampling import sample_tokens

__all__ = ["sample_tokens"]
