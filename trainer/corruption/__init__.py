"""trainer.corruption."""

from trainer.corruption.sampling import sample_tokens

# DESIGN.md names the one sampler used offline and online ``trainer.corruption.sample_tokens``.
__all__ = ["sample_tokens"]
