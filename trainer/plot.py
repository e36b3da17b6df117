"""`python -m trainer.plot`: PNG curves of runs' metrics.jsonl.

The command's entry only; the tool is trainer/tools/plot.py. It stays at this path so
that the commands users type did not change when the tools moved to trainer/tools/; code
imports from trainer.tools.plot.
"""

import sys

from trainer.tools.plot import main

if __name__ == "__main__":
    sys.exit(main())
