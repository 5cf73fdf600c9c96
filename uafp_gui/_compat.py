"""What the supported Pythons (3.10+) lack: `StrEnum` arrived in 3.11."""

from __future__ import annotations

import sys
from enum import Enum

if sys.version_info >= (3, 11):
    from enum import StrEnum
else:  # pragma: no cover - Python 3.10

    class StrEnum(str, Enum):
        """Members are their values: compare, format and serialise as plain strings."""

        def __str__(self) -> str:  # format() already gives the value on 3.10
            return str(self.value)


__all__ = ["StrEnum"]
