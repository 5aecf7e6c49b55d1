"""``python -m segbench.compare``: the same as ``segbench compare`` (:mod:`segbench.cli.compare`)."""
import sys

from segbench.cli.compare import main

if __name__ == "__main__":
    sys.exit(main())
