"""The communication-cost benchmark: ``python -m simulations.benchmark --preset quick`` (see ``benchmark.py``)."""

import sys

from simulations.benchmark.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
