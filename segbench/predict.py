"""``python -m segbench.predict``: the same as ``segbench predict`` (:mod:`segbench.cli.predict`)."""
import sys

from segbench.cli.predict import main

if __name__ == "__main__":
    sys.exit(main())
