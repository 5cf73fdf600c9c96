"""Opening a microscope from a choice: the LED array (serial or simulated) and the camera (a
Micro-Manager configuration, or the simulated FP microscope). The GUI's Connect and `uafp acquire`
both open their devices here.

This is the one production module that imports `uafp_gui.simulated`: the simulated microscope is a
choice the user makes, like a port or a configuration file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from uafp_gui.devices.interfaces import LedArray, Orientation

if TYPE_CHECKING:
    from pymmcore_plus.experimental.unicore import UniMMCore

    from uafp_gui.acquisition.plan import MicroscopeDescription
    from uafp_gui.simulate import SimulationSettings

__all__ = ["DARKFIELD_REACH_NA", "MicroscopeChoice", "OpenedMicroscope", "pattern_leds", "open_microscope"]


@dataclass(frozen=True)
class MicroscopeChoice:
    """What to open. `led_port`: None for the simulated LED array, "auto" or a serial port;
    `mm_config`: None for the simulated FP microscope's camera, else a Micro-Manager configuration
    (found through `mm_path`). `pitch_mm`: a real LED array's pitch (None: what it reports);
    `rgb`: the LED colour to set (None: leave it). `realtime`: the simulated camera waits out
    each exposure as a real one does."""

    led_port: str | None = None
    mm_config: Path | None = None
    orientation: Orientation = field(default_factory=Orientation)
    pitch_mm: float | None = None
    rgb: tuple[int, int, int] | None = None
    mm_path: str | None = None
    realtime: bool = True

    @property
    def simulated(self) -> bool:
        """Both devices simulated (no hardware at all)."""
        return self.led_port is None and self.mm_config is None


@dataclass
class OpenedMicroscope:
    """An opened microscope: the core (camera and the LED array's device), the LED array, the
    nominal `microscope` description (the simulation's; None for hardware, which the user
    describes), the camera's bit depth and a one-line `description`."""

    core: UniMMCore
    led_array: LedArray
    microscope: MicroscopeDescription | None
    bit_depth: int
    description: str
    simulation: SimulationSettings | None = None

    def close(self) -> None:
        """Close the LED array (the core holds nothing that needs closing)."""
        self.led_array.close()


DARKFIELD_REACH_NA = 0.1  # the dark-field pattern: LEDs up to this far beyond the objective's NA


def pattern_leds(microscope: MicroscopeDescription, pattern: str) -> list[tuple[int, int]]:
    """The LEDs of a test pattern: "brightfield" (inside the objective's NA), "darkfield" (a ring just
    outside it), anything else none."""
    rows, cols = microscope.led_array_shape
    every = [(r, c) for r in range(rows) for c in range(cols)]
    if pattern == "brightfield":
        return [led for led in every if microscope.is_brightfield(led)]
    if pattern == "darkfield":
        reach = microscope.objective_na + DARKFIELD_REACH_NA
        return [led for led in every if microscope.objective_na <= microscope.illumination_na(led) < reach]
    return []


def open_microscope(choice: MicroscopeChoice, simulation: SimulationSettings | None = None) -> OpenedMicroscope:
    """Open what `choice` names (blocking: a GUI runs it off the UI thread). `simulation` is the
    simulated FP microscope used where `choice` asks for a simulated device (default: the
    simulator's own default settings)."""
    from uafp_gui.acquisition.plan import MicroscopeDescription
    from uafp_gui.devices.illuminate import IlluminateLedArray
    from uafp_gui.devices.micromanager import camera_bit_depth, open_core
    from uafp_gui.simulated.led_array import SimulatedLedArray
    from uafp_gui.simulated.microscope import open_simulated_microscope

    simulated_camera = choice.mm_config is None
    if simulation is None and (simulated_camera or choice.led_port is None):
        from uafp_gui.simulated.camera import default_simulation_settings

        simulation = default_simulation_settings()
    led_array: LedArray
    if choice.led_port is None:
        assert simulation is not None
        rows, cols = simulation.led_array_shape
        led_array = SimulatedLedArray(
            (int(rows), int(cols)),
            simulation.led_pitch_mm,
            orientation=choice.orientation,
            height_mm=simulation.led_height_mm,
        )
        led_text = "simulated LED array"
    elif simulation is not None and simulated_camera:  # a real LED array before the simulated camera
        led_array = IlluminateLedArray(
            choice.led_port,
            orientation=choice.orientation,
            shape=(int(simulation.led_array_shape[0]), int(simulation.led_array_shape[1])),
            pitch_mm=simulation.led_pitch_mm,
        )
        led_text = f"LED array on {led_array.port}"
    else:
        led_array = IlluminateLedArray(choice.led_port, orientation=choice.orientation, pitch_mm=choice.pitch_mm)
        led_text = f"LED array on {led_array.port}"
    try:
        if choice.rgb is not None:
            led_array.set_color(*choice.rgb)
        microscope = None
        if choice.mm_config is None:
            assert simulation is not None
            core, led_array = open_simulated_microscope(simulation, led_array, realtime=choice.realtime)
            microscope = MicroscopeDescription.from_simulation(simulation)
            camera_text = "simulated microscope camera"
        else:
            core, led_array = open_core(os.fspath(choice.mm_config), led_array, mm_path=choice.mm_path)
            camera_text = f"camera {core.getCameraDevice()} ({Path(choice.mm_config).name})"
        bit_depth = camera_bit_depth(core)
    except BaseException:
        led_array.close()
        raise
    return OpenedMicroscope(
        core=core,
        led_array=led_array,
        microscope=microscope,
        bit_depth=bit_depth,
        description=f"{camera_text}, {led_text}",
        simulation=simulation if simulated_camera else None,
    )
