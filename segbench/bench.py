"""``python -m segbench.bench``: the same as ``segbench bench`` (:mod:`segbench.cli.bench`)."""
import sys

from segbench.cli.bench import main

if __name__ == "__main__":
    sys.exit(main())
