"""trainer.tools.finetune."""
