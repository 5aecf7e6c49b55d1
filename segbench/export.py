"""``python -m segbench.export``: the same as ``segbench export`` (:mod:`segbench.cli.export`)."""
import sys

from segbench.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
