"""`python -m trainer.sweep`: one training run per grid point.

The command's entry only; the tool is trainer/tools/sweep.py. It stays at this path so
that the commands users type did not change when the tools moved to trainer/tools/; code
imports from trainer.tools.sweep.
"""

import sys

from trainer.tools.sweep import main

if __name__ == "__main__":
    sys.exit(main())
