"""`python -m joblot` runs the joblot command."""

import sys

from joblot.cli import main

sys.exit(main())
