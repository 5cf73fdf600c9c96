"""Progress bars with ETA for long CLI jobs (tqdm on stderr; silent when not a terminal and short)."""

from __future__ import annotations

import sys

from tqdm import tqdm


def progress_bar(total: int, description: str, unit: str = "it") -> tqdm:
    """A bar with ETA; appears only once the job has run for a second (`delay=1`)."""
    return tqdm(total=total, desc=description, unit=unit, file=sys.stderr, delay=1.0, dynamic_ncols=True)
