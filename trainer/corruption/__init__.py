"""trainer.corruption."""
