"""trainer.modes."""
