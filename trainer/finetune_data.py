"""`python -m trainer.finetune_data`: the demo fine-tuning task files from a corpus.

The command's entry only; the tool is trainer/tools/finetune/data.py. It stays at this path so
that the commands users type did not change when the tools moved to trainer/tools/; code
imports from trainer.tools.finetune.data.
"""

import sys

from trainer.tools.finetune.data import main

if __name__ == "__main__":
    sys.exit(main())
