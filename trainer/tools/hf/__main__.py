"""`python -m trainer.tools.hf`: the command of trainer/tools/hf/cli.py."""

import sys

from trainer.tools.hf.cli import main

# Guarded: importing the module (pkgutil.walk_packages does) must not run the command.
if __name__ == "__main__":
    sys.exit(main())
