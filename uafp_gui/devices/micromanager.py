"""Building the Micro-Manager core from a user's configuration file.

Everything goes through one pymmcore-plus `UniMMCore`: it runs Micro-Manager's C++ device
adapters (a real camera, loaded from the user's `.cfg`) side by side with Python devices
(the LED array, which uafp drives with its own serial driver).

- `open_core(mm_config, led_array)`: the user's configuration drives the camera; the LED array
  is added as device `LEDArray` (`uafp_gui.devices.mm_led`).
- The simulated FP microscope (no configuration) is `uafp_gui.simulated.open_simulated_microscope`;
  choosing between them is the session layer's job.

Micro-Manager itself (its device adapters) is only needed for a configuration that names
C++ adapters; nothing here imports or requires them otherwise.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from pymmcore_plus.experimental.unicore import UniMMCore

from uafp_gui.devices.mm_led import attach_led_array
from uafp_gui.errors import ConfigError, DeviceError

if TYPE_CHECKING:  # pragma: no cover
    from uafp_gui.devices.interfaces import LedArray

__all__ = ["camera_bit_depth", "camera_offset", "load_config_core", "new_core", "open_core"]


@contextlib.contextmanager
def _quiet_discovery() -> Iterator[None]:
    # pymmcore-plus logs an ERROR when it finds no Micro-Manager installation; a core that
    # holds only Python devices does not need one.
    logger = logging.getLogger("pymmcore-plus")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def new_core(mm_path: str | None = None) -> UniMMCore:
    """An empty `UniMMCore`; `mm_path` is the Micro-Manager folder holding device adapters
    (default: `MICROMANAGER_PATH`, else pymmcore-plus's discovery, e.g. after `mmcore install`)."""
    mm_path = mm_path or os.environ.get("MICROMANAGER_PATH") or None
    if mm_path is not None:
        return UniMMCore(mm_path=mm_path)
    with _quiet_discovery():
        return UniMMCore()


def load_config_core(mm_config: str | os.PathLike[str], mm_path: str | None = None) -> UniMMCore:
    """A core with the user's Micro-Manager configuration loaded; typed errors say what to fix."""
    path = Path(mm_config).expanduser()
    if not path.is_file():
        raise ConfigError(f"Micro-Manager configuration {path} does not exist: pass --mm-config FILE.cfg")
    core = new_core(mm_path)
    try:
        core.loadSystemConfiguration(str(path.resolve()))
    except Exception as error:  # the C++ core raises RuntimeError, python devices anything
        searched = list(core.getDeviceAdapterSearchPaths())
        hint = (
            "no Micro-Manager installation was found: install it (https://micro-manager.org, or "
            "`mmcore install`) or set MICROMANAGER_PATH to its folder"
            if not searched
            else f"Micro-Manager device adapters are searched in {searched}: check the adapter "
            "names in the file and that the camera is connected and not open in another program"
        )
        raise ConfigError(f"cannot load Micro-Manager configuration {path}: {error}. {hint}") from error
    if not core.getCameraDevice():
        cameras = list(core.getLoadedDevicesOfType(2))  # DeviceType.Camera
        if not cameras:
            raise ConfigError(f"{path} loads no camera: add a camera device (see hardware/micro-manager/)")
        core.setCameraDevice(cameras[0])
    return core


def open_core(
    mm_config: str | os.PathLike[str],
    led_array: LedArray | None,
    *,
    mm_path: str | None = None,
) -> tuple[UniMMCore, LedArray]:
    """The core and LED array to acquire with: the user's Micro-Manager configuration plus
    `led_array` (required) exposed as device `LEDArray`; a Python camera of the configuration (a
    `#py` line) that `WatchesLedArray` is handed that array."""
    if led_array is None:
        raise ConfigError("a Micro-Manager configuration needs an LED array too: pass --led-port PORT (or auto)")
    core = load_config_core(mm_config, mm_path)
    attach_led_array(core, led_array)
    return core, led_array


def camera_bit_depth(core: UniMMCore) -> int:
    """The camera's bit depth: its `BitDepth` property when it has one (Micro-Manager reports
    the pixel type's 16 bits for 12-bit cameras otherwise), else the core's image bit depth."""
    label = core.getCameraDevice()
    if not label:
        raise DeviceError("no camera is selected in the Micro-Manager core")
    for name in ("BitDepth", "PixelBitDepth", "Bit Depth"):
        if core.hasProperty(label, name):
            try:
                return int(float(core.getProperty(label, name)))
            except (TypeError, ValueError):
                continue
    return int(core.getImageBitDepth())


def camera_offset(core: UniMMCore) -> float | None:
    """The camera's dark offset in counts when it reports one (`Offset` property)."""
    label = core.getCameraDevice()
    if label and core.hasProperty(label, "Offset"):
        try:
            return float(core.getProperty(label, "Offset"))
        except (TypeError, ValueError):
            return None
    return None

