"""`python -m uafp_gui` is the `uafp` command."""

import sys

from uafp_gui.cli import main

sys.exit(main())
