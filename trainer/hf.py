"""`python -m trainer.hf`: Hugging Face import / export.

The command's entry only; the tool is trainer/tools/hf/cli.py. It stays at this path so
that the commands users type did not change when the tools moved to trainer/tools/; code
imports from trainer.tools.hf.cli.
"""

import sys

from trainer.tools.hf.cli import main

if __name__ == "__main__":
    sys.exit(main())
