"""`python -m trainer.cost`: FLOPs, parameters and time per step (paper Table 3).

The command's entry only; the tool is trainer/tools/cost.py. It stays at this path so
that the commands users type did not change when the tools moved to trainer/tools/; code
imports from trainer.tools.cost.
"""

import sys

from trainer.tools.cost import main

if __name__ == "__main__":
    sys.exit(main())
