"""`python -m benchmarks` (what `make bench` runs); see `benchmarks/runner.py`."""

import sys

from benchmarks.runner import main

sys.exit(main())
