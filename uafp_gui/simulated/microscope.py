"""The simulated FP microscope: a `UniMMCore` holding a `SimulatedFpCamera` ("Camera") and the LED
array ("LEDArray", a `SimulatedLedArray` unless another is given). The default microscope when no
hardware is found; tests and benchmarks build theirs here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pymmcore_plus.experimental.unicore import UniMMCore

from uafp_gui.devices.interfaces import LedArray
from uafp_gui.devices.micromanager import new_core
from uafp_gui.devices.mm_led import attach_led_array
from uafp_gui.devices.pydevices import python_device
from uafp_gui.errors import ConfigError
from uafp_gui.simulated.camera import DEFAULT_EXPOSURE_MS, SimulatedFpCamera, default_simulation_settings
from uafp_gui.simulated.led_array import SimulatedLedArray

if TYPE_CHECKING:  # pragma: no cover
    from uafp_gui.simulate import SimulationSettings

__all__ = ["CAMERA_LABEL", "open_simulated_microscope", "simulated_camera", "simulation_with"]

CAMERA_LABEL = "Camera"


def open_simulated_microscope(
    settings: SimulationSettings | None = None,
    led_array: LedArray | None = None,
    *,
    realtime: bool = True,
    device: str = "cpu",
) -> tuple[UniMMCore, LedArray]:
    """A core with a simulated FP camera ("Camera") and the LED array ("LEDArray").

    `led_array` defaults to a `SimulatedLedArray` (the real serial driver talking to a model
    of the firmware) of the settings' shape and pitch.
    """
    settings = settings or default_simulation_settings()
    if led_array is None:
        led_array = SimulatedLedArray(
            (int(settings.led_array_shape[0]), int(settings.led_array_shape[1])),
            settings.led_pitch_mm,
            height_mm=settings.led_height_mm,
        )
    if tuple(led_array.shape) != tuple(settings.led_array_shape):
        raise ConfigError(
            f"the LED array is {led_array.shape[0]}x{led_array.shape[1]} but the simulated microscope "
            f"expects {settings.led_array_shape[0]}x{settings.led_array_shape[1]}"
        )
    core = new_core()
    camera = SimulatedFpCamera(settings, led_array, realtime=realtime, device=device)
    core.loadPyDevice(CAMERA_LABEL, camera)
    core.initializeDevice(CAMERA_LABEL)
    core.setCameraDevice(CAMERA_LABEL)
    attach_led_array(core, led_array)
    core.setExposure(DEFAULT_EXPOSURE_MS)
    return core, led_array


def simulated_camera(core: UniMMCore) -> SimulatedFpCamera | None:
    """The core's current camera when it is a `SimulatedFpCamera`."""
    label = core.getCameraDevice()
    device = python_device(core, label) if label else None
    return device if isinstance(device, SimulatedFpCamera) else None


def simulation_with(settings: SimulationSettings | None = None, **changes: Any) -> SimulationSettings:
    """`settings` (default: the misaligned preset) with some fields changed."""
    return (settings or default_simulation_settings()).replace(**changes)

