"""trainer.config."""
