"""`python -m trainer.tools.finetune`: the command of trainer/tools/finetune/run.py."""

import sys

from trainer.tools.finetune.run import main

# Guarded: importing the module (pkgutil.walk_packages does) must not run the command.
if __name__ == "__main__":
    sys.exit(main())
