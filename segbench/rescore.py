"""``python -m segbench.rescore``: the same as ``segbench rescore`` (:mod:`segbench.cli.rescore`)."""
import sys

from segbench.cli.rescore import main

if __name__ == "__main__":
    sys.exit(main())
