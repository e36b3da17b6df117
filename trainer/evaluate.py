"""`python -m trainer.evaluate`: held-out RTD / MLM metrics of checkpoints.

The command's entry only; the tool is trainer/tools/evaluate.py. It stays at this path so
that the commands users type did not change when the tools moved to trainer/tools/; code
imports from trainer.tools.evaluate.
"""

import sys

from trainer.tools.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
