"""``python -m segbench.check_data``: the same as ``segbench check-data`` (:mod:`segbench.cli.check_data`)."""
import sys

from segbench.cli.check_data import main

if __name__ == "__main__":
    sys.exit(main())
