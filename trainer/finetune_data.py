"""`python -m trainer.finetune_data`: the demo fine-tuning task files from a corpus.

The command's entry only; the tool is trainer/tools/finetune/demo_tasks.py. It stays at this
path so that the commands users type did not change when the tools moved to trainer/tools/;
code imports from trainer.tools.finetune.demo_tasks.
"""

import sys

from trainer.tools.finetune.demo_tasks import main

if __name__ == "__main__":
    sys.exit(main())
