"""`python -m torchpalm ...`: the same command line as the `torchpalm` console script."""

import sys

from .cli import main

sys.exit(main())
