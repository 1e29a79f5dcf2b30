"""`python -m magicme`: the same command line as `magicme`."""

import sys

from magicme.cli import main

sys.exit(main())
