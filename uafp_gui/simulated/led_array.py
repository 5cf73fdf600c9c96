"""`SimulatedLedArray`: the real serial driver (`IlluminateLedArray`) talking to a Python model of
the firmware through a loopback port, with failure injection and the trigger pins exposed."""

from __future__ import annotations

from uafp_gui.devices.illuminate import IlluminateLedArray
from uafp_gui.devices.illuminate_connection import IlluminateConnection
from uafp_gui.devices.interfaces import Orientation
from uafp_gui.simulated.firmware import FirmwareBuild, IlluminateFirmwareModel, LoopbackPort

__all__ = ["SimulatedLedArray"]


class SimulatedLedArray(IlluminateLedArray):
    """An LED array with no hardware: the serial driver talking to a model of the firmware.

    Failure injection for tests of code that uses an LED array:
    `disconnect()` (cable pulled: `LedArrayDisconnected` until `reconnect_cable()`),
    `fail_after(n)` (answers n more commands, then stops answering: `LedArrayTimeout`).
    """

    def __init__(
        self,
        shape: tuple[int, int] = (32, 32),
        pitch_mm: float = 4.0,
        *,
        orientation: Orientation | None = None,
        height_mm: float = 50.0,
        timeout_s: float = 0.2,
    ) -> None:
        self.model = IlluminateFirmwareModel(
            FirmwareBuild(
                rows=shape[0],
                cols=shape[1],
                pitch_um=round(pitch_mm * 1000),
                distance_mm=round(height_mm),
            )
        )
        self.loopback = LoopbackPort(self.model)
        self._loopback_first_open = True

        def open_loopback(port: str) -> LoopbackPort:
            if not self._loopback_first_open:
                self.loopback.open()
            self._loopback_first_open = False
            return self.loopback

        connection = IlluminateConnection(
            "simulated", timeout_s=timeout_s, boot_timeout_s=timeout_s, open_port=open_loopback
        )
        super().__init__(orientation=orientation, pitch_mm=pitch_mm, connection=connection)

    def disconnect(self) -> None:
        """Pull the simulated cable: the next command raises `LedArrayDisconnected`."""
        self.loopback.unplug()

    def reconnect_cable(self) -> None:
        """Plug the simulated cable back in; the next command reconnects."""
        self.loopback.plug_in()
        self.model.reset_state()  # a real board reboots when the port is reopened

    def fail_after(self, commands: int) -> None:
        """Answer `commands` more commands, then go silent (`LedArrayTimeout`)."""
        self.loopback.mute_after(commands)

    def recover(self) -> None:
        """Undo `fail_after`/`disconnect`."""
        self.loopback.plug_in()

    # ---- the trigger pins, for a simulated camera wired to them ------------------------------
    def trigger_in(self) -> None:
        """A rising edge on the trigger input (D2), as a camera's exposure-end output makes."""
        self.model.trigger_in()

    def trigger_out_count(self) -> int:
        """Pulses sent on the trigger output (D5) so far (a camera's external trigger input)."""
        return self.model.trigger_out_pulses

