"""The device interfaces the acquisition engine talks to: the LED array (and its orientation
mapping) and the capabilities a camera device may offer (the device errors: `uafp_gui.errors`).

An LED array is addressed in *image axes* (docs/dataset_format.md section 2): `(row, col)` with
row growing with the image y axis and col with x. The array's own wiring (row 0 is the
first row along the LED strip) is mapped into those axes by an `Orientation` (flips and
a transpose), so a dataset never has to know how the panel was mounted.

Implementations: `IlluminateLedArray` (serial, illuminate command set, in
`uafp_gui.devices.illuminate`) and `uafp_gui.simulated.SimulatedLedArray` (no hardware; the same
driver talking to a Python model of the firmware). Both raise the `LedArrayError` family.

Camera capabilities (`WatchesLedArray`, `PreparesForRun`, `AbortsSequence`) are small protocols a
Python camera device may implement; production code checks for the capability, never for a class.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, runtime_checkable

from uafp_gui.errors import LedArrayError, LedArraySequenceError
from uafp_gui.model import RowCol

__all__ = [
    "AbortsSequence",
    "LedArray",
    "Orientation",
    "PreparesForRun",
    "WatchesLedArray",
]




@dataclass(frozen=True)
class Orientation:
    """How the array's wiring axes map into image axes.

    Applied in this order to an array (row, col): flip rows, flip cols, then transpose.
    `transpose=True` with one flip is a rotation by 90 degrees.
    """

    flip_rows: bool = False
    flip_cols: bool = False
    transpose: bool = False

    def image_shape(self, array_shape: RowCol) -> RowCol:
        rows, cols = array_shape
        return (cols, rows) if self.transpose else (rows, cols)

    def to_image(self, array_rc: RowCol, array_shape: RowCol) -> RowCol:
        """Map an array (wiring) row/col to image row/col."""
        row, col = array_rc
        rows, cols = array_shape
        if self.flip_rows:
            row = rows - 1 - row
        if self.flip_cols:
            col = cols - 1 - col
        return (col, row) if self.transpose else (row, col)

    def to_array(self, image_rc: RowCol, array_shape: RowCol) -> RowCol:
        """Map an image row/col back to the array (wiring) row/col."""
        row, col = image_rc
        if self.transpose:
            row, col = col, row
        rows, cols = array_shape
        if self.flip_rows:
            row = rows - 1 - row
        if self.flip_cols:
            col = cols - 1 - col
        return row, col


class LedArray(ABC):
    """An LED matrix addressed by (row, col) in image axes.

    Subclasses implement the `_send_*` hooks in array (wiring) axes; this class validates
    arguments, applies the orientation and keeps track of what is lit.
    """

    def __init__(self, orientation: Orientation | None = None) -> None:
        self.orientation = orientation or Orientation()
        self._lit: frozenset[RowCol] = frozenset()

    # ---- geometry -------------------------------------------------------------------------
    @property
    @abstractmethod
    def array_shape(self) -> RowCol:
        """(rows, cols) in the array's own wiring axes."""

    @property
    def shape(self) -> RowCol:
        """(rows, cols) in image axes."""
        return self.orientation.image_shape(self.array_shape)

    @property
    @abstractmethod
    def pitch_mm(self) -> float:
        """Centre-to-centre LED spacing."""

    @property
    def lit(self) -> frozenset[RowCol]:
        """The LEDs lit now, in image axes."""
        return self._lit

    def image_to_array(self, led: RowCol) -> RowCol:
        return self.orientation.to_array(led, self.array_shape)

    def array_to_image(self, led: RowCol) -> RowCol:
        return self.orientation.to_image(led, self.array_shape)

    def _validate(self, leds: Iterable[RowCol]) -> list[RowCol]:
        rows, cols = self.shape
        checked: list[RowCol] = []
        for led in leds:
            try:
                row, col = (int(led[0]), int(led[1]))
            except (TypeError, ValueError, IndexError) as error:
                raise LedArrayError(f"LED {led!r} is not a (row, col) pair of integers") from error
            if not (0 <= row < rows and 0 <= col < cols):
                raise LedArrayError(
                    f"LED (row {row}, col {col}) is outside the {rows}x{cols} array "
                    "(image axes, 0-based): check led_array_shape and the orientation"
                )
            checked.append((row, col))
        return checked

    # ---- commands -------------------------------------------------------------------------
    def light(self, leds: Sequence[RowCol]) -> None:
        """Light exactly these LEDs (image axes) with the current colour; others go dark."""
        image_leds = self._validate(leds)
        if not image_leds:
            self.clear()
            return
        self._send_light([self.image_to_array(led) for led in image_leds])
        self._lit = frozenset(image_leds)

    def clear(self) -> None:
        """Switch every LED off."""
        self._send_clear()
        self._lit = frozenset()

    def set_brightness(self, value: int | Sequence[int]) -> None:
        """Brightness 0-255, one value for all channels or (r, g, b)."""
        try:
            values = [value] if isinstance(value, int) else list(value)
        except TypeError:
            values = []
        if len(values) not in (1, 3) or any(not isinstance(v, int) or not 0 <= v <= 255 for v in values):
            raise LedArrayError(f"brightness must be 0-255 or three such values, got {value!r}")
        self._send_brightness(tuple(values))

    def set_color(self, r: int, g: int, b: int) -> None:
        """Colour of lit LEDs, 0-255 per channel (scaled by the brightness)."""
        if any(not isinstance(v, int) or not 0 <= v <= 255 for v in (r, g, b)):
            raise LedArrayError(f"colour channels must be integers 0-255, got {(r, g, b)!r}")
        self._send_color((r, g, b))

    # ---- hardware-triggered sequences (optional) ---------------------------------------------
    # An array that can step through a loaded list of LEDs on each rising edge of its trigger
    # input overrides these; the defaults say it cannot.
    supports_sequences = False

    def load_sequence(self, leds: Sequence[RowCol]) -> None:
        """Load single-LED steps (image axes) for hardware-triggered stepping."""
        raise LedArraySequenceError(self._no_sequences())

    def arm_sequence(self) -> None:
        """Light step 0; each trigger-input edge then advances one step (dark after the last)."""
        raise LedArraySequenceError(self._no_sequences())

    def start_sequence(self) -> None:
        """Same as `arm_sequence` (the name Micro-Manager's sequence API uses)."""
        self.arm_sequence()

    def stop_sequence(self) -> None:
        """Disarm the sequence and switch the LEDs off."""
        raise LedArraySequenceError(self._no_sequences())

    def sequence_position(self) -> int:
        """Steps taken since arming: 0 while step 0 is lit, the sequence length once past the end."""
        raise LedArraySequenceError(self._no_sequences())

    def _no_sequences(self) -> str:
        return (
            f"{type(self).__name__} has no hardware-triggered sequence mode: use software-timed "
            "acquisition, or an array running the uafp-led/illuminate firmware"
        )

    @abstractmethod
    def _send_light(self, array_leds: list[RowCol]) -> None: ...

    @abstractmethod
    def _send_clear(self) -> None: ...

    @abstractmethod
    def _send_brightness(self, values: tuple[int, ...]) -> None: ...

    @abstractmethod
    def _send_color(self, rgb: tuple[int, int, int]) -> None: ...

    @abstractmethod
    def close(self) -> None:
        """Release the hardware; safe to call twice."""

    def __enter__(self) -> LedArray:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()



# ---- camera capabilities (Python camera devices may offer them; checked, never required) -----------


@runtime_checkable
class WatchesLedArray(Protocol):
    """A device that must know the LED array (e.g. a camera wired to its trigger pins, or one that
    renders what it lights): `attach_led_array` hands it the array after loading."""

    def watch_led_array(self, led_array: LedArray) -> None: ...


@runtime_checkable
class PreparesForRun(Protocol):
    """A camera that can get ready for the LED patterns of a run before it starts (keeps snaps fast)."""

    def prepare(self, leds: Iterable[RowCol]) -> None: ...


@runtime_checkable
class AbortsSequence(Protocol):
    """A camera whose sequence acquisition can wait on an external trigger: `abort_sequence` ends the
    wait (the core's `stopSequenceAcquisition` only stops it between frames)."""

    def abort_sequence(self) -> None: ...
