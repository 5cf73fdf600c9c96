"""Files written whole or not at all get the permissions an ordinary new file would get.

`tempfile.mkstemp`/`mkdtemp` create 0600/0700 entries; a file renamed into place keeps that mode
unless it is set to what the process's umask allows.
"""

from __future__ import annotations

import os


def new_file_mode(mode: int = 0o666) -> int:
    """`mode` less the process's umask (0o666 for files, 0o777 for folders)."""
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask
