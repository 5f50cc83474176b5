"""`python -m liser.cli ARGS`: the `liser` command."""

import sys

from liser.cli import main

sys.exit(main())
