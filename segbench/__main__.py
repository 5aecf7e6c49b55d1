"""``python -m segbench``: the same as the ``segbench`` command (:mod:`segbench.cli.main`)."""
import sys

from segbench.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
