"""``python -m segbench.upgrade_checkpoints``: the same as ``segbench upgrade-checkpoints``
(:mod:`segbench.cli.upgrade_checkpoints`)."""
import sys

from segbench.cli.upgrade_checkpoints import main

if __name__ == "__main__":
    sys.exit(main())
