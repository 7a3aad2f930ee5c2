"""`python -m mbt ...` (and `torchrun -m mbt train ...`): the `mbt` command line."""

import sys

from .cli import main

sys.exit(main())
