"""The data folder is private to the gateway's user (mode 0700).

It holds photos of whoever stands at the door, the event journals, `status.json` with the
recipients' phone numbers, the broker's password file and the WhatsApp session. Files inside keep
ordinary modes (0644 from the default umask); a 0700 folder is what stops other local users from
reaching any of them, so that is the one thing checked, at every start (issue 14, item 14).
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

PRIVATE_MODE = 0o700


def ensure_private_dir(path: Path | str) -> bool:
    """Create `path` with mode 0700, or tighten an existing one that others can read or enter.

    Returns True when it changed an existing folder's mode (and logs it). Only group/other bits are
    removed from a folder we own; a folder owned by someone else is left alone with a warning.
    """
    path = Path(path)
    try:
        path.mkdir(mode=PRIVATE_MODE, parents=True)
        return False  # mkdir's mode is filtered by the umask, which can only make it stricter
    except FileExistsError:
        pass
    st = path.stat()
    mode = stat.S_IMODE(st.st_mode)
    if not mode & 0o077:
        return False
    if st.st_uid != os.geteuid():
        log.warning("data folder %s has mode %04o and is not ours; others may read it", path, mode)
        return False
    os.chmod(path, mode & ~0o077 | 0o700)
    log.warning(
        "data folder %s had mode %04o (other users could read photos and phone numbers); now 0700",
        path,
        mode,
    )
    return True
