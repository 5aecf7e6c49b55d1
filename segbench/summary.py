"""``python -m segbench.summary``: the same as ``segbench summary`` (:mod:`segbench.cli.summary`)."""
import sys

from segbench.cli.summary import main

if __name__ == "__main__":
    sys.exit(main())
