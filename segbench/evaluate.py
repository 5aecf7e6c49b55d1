"""``python -m segbench.evaluate``: the same as ``segbench evaluate`` (:mod:`segbench.cli.evaluate`)."""
import sys

from segbench.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
