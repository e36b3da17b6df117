"""`python -m trainer.finetune`: fine-tune a pre-trained discriminator on a task.

The command's entry only; the tool is trainer/tools/finetune/run.py. It stays at this path so
that the commands users type did not change when the tools moved to trainer/tools/; code
imports from trainer.tools.finetune.run.
"""

import sys

from trainer.tools.finetune.run import main

if __name__ == "__main__":
    sys.exit(main())
