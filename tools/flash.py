#!/usr/bin/env python3
"""Flash and provision a parcelbox box: `python tools/flash.py provision --device NAME`.

The same commands as `parcelbox flash`; this wrapper runs from a checkout without installing.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.flash import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
