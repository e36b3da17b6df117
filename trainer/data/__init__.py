"""trainer.data."""
