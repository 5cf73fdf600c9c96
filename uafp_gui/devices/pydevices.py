"""The Python object behind a device label of a pymmcore-plus `UniMMCore`.

pymmcore-plus 0.18 has no public accessor for a loaded Python device's instance (`loadPyDevice`
takes one in, nothing hands it back out): `python_device` is the one place that reads the core's
private registry, so a pymmcore-plus upgrade that renames it breaks one function.
"""

from __future__ import annotations

from typing import Any

from pymmcore_plus.experimental.unicore import UniMMCore

__all__ = ["python_device"]


def python_device(core: Any, label: str) -> object | None:
    """The Python device loaded under `label`, or None (not a `UniMMCore`, no such device, or a
    C++ device)."""
    if not isinstance(core, UniMMCore) or not label or not core.isPyDevice(label):
        return None
    return core._pydevices[label]  # noqa: SLF001 - no public accessor (see the module docstring)
