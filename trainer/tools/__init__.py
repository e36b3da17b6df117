"""trainer.tools."""
