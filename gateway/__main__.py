"""`python -m gateway ...` is `parcelbox ...`."""

import sys

from gateway.cli import main

sys.exit(main())
