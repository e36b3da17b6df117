"""trainer.tools.hf."""
