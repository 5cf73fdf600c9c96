"""The domain every layer builds on: LED indices, the nominal optics, the LED geometry, LED positions.

The bottom of the package: no Qt, no files, numpy only (torch only when `led_positions_mm` is
given tensors, which means it is loaded already). `Optics` holds the nominal microscope fields
once, `Glass` the slide below the sample; a dataset's metadata (`io.schema.DatasetMeta`), the
acquisition's `MicroscopeDescription` and the simulator's `SimulationSettings` contain an Optics
and read its fields through `HasOptics`. `led_positions_mm` is the one place an LED's [X, Y] is computed (spec
section 2); it works on numpy arrays and, differentiably, on torch tensors. The validators raise
`DatasetError` naming the field and the fix; `io` and the settings classes use them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from uafp_gui.errors import DatasetError
from uafp_gui.limits import MAX_LED_ARRAY_SIDE

RowCol = tuple[int, int]
"""One LED of an array: its 0-based (row, col) index."""

__all__ = [
    "MAXIMA",
    "OPTICS_FIELDS",
    "Glass",
    "HasOptics",
    "LedGeometry",
    "Optics",
    "RowCol",
    "at_most",
    "illumination_na",
    "integer",
    "led_positions_mm",
    "number",
    "pair",
    "positive",
    "row_col_pairs",
    "text",
]

# --------------------------------------------------------------------------------- validators


def number(value: Any, name: str, hint: str = "") -> float:
    """`value` as a finite float; `DatasetError` naming `name` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise DatasetError(
            f"{name} must be a number (got {value!r} of type {type(value).__name__})" + (f": {hint}" if hint else "")
        )
    try:
        result = float(value)
    except OverflowError:
        result = math.inf
    if not math.isfinite(result):
        shown = repr(value) if len(repr(value)) < 40 else repr(value)[:37] + "..."
        raise DatasetError(f"{name} must be finite (got {shown})" + (f": {hint}" if hint else ""))
    return result


def at_most(value: float, maximum: float, name: str, hint: str) -> float:
    """`value` when |value| <= `maximum` (a bound far beyond any real microscope)."""
    if abs(value) > maximum:
        raise DatasetError(f"{name} = {value:g} is beyond the plausible {maximum:g}: {hint}")
    return value


def positive(value: Any, name: str, hint: str) -> float:
    result = number(value, name, hint)
    if result <= 0:
        raise DatasetError(f"{name} must be > 0 (got {value!r}): {hint}")
    return result


def integer(value: Any, name: str, hint: str = "") -> int:
    result = number(value, name, hint)
    if result != int(result):
        raise DatasetError(f"{name} must be an integer (got {value!r})" + (f": {hint}" if hint else ""))
    return int(result)


def pair(value: Any, name: str, hint: str) -> tuple[float, float]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
        raise DatasetError(f"{name} must be a pair [a, b] (got {value!r}): {hint}")
    if len(value) != 2:
        raise DatasetError(f"{name} must have 2 entries (got {len(value)}): {hint}")
    return (number(value[0], f"{name}[0]", hint), number(value[1], f"{name}[1]", hint))


def text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise DatasetError(f"{name} must be a string (got {value!r} of type {type(value).__name__})")
    return value


def row_col_pairs(leds: Any, name: str) -> tuple[RowCol, ...]:
    """A non-empty list of [row, col] integer pairs (integral floats such as 3.0 accepted)."""
    hint = "list every lit LED as [row, col] integer indices, e.g. [[15, 16]]"
    if isinstance(leds, (str, bytes)) or not isinstance(leds, (Sequence, np.ndarray)):
        raise DatasetError(f"{name} must be a list of [row, col] pairs (got {leds!r}): {hint}")
    if len(leds) == 0:
        raise DatasetError(f"{name} is empty: {hint}")
    if len(leds) > MAX_LED_ARRAY_SIDE**2:
        raise DatasetError(f"{name} lists {len(leds)} LEDs, more than an LED array of the limit holds: {hint}")
    out = []
    for k, led in enumerate(leds):
        if isinstance(led, (str, bytes)) or not isinstance(led, (Sequence, np.ndarray)) or len(led) != 2:
            raise DatasetError(f"{name}[{k}] must be a [row, col] pair (got {led!r}): {hint}")
        out.append((integer(led[0], f"{name}[{k}][0]", hint), integer(led[1], f"{name}[{k}][1]", hint)))
    return tuple(out)


# Upper bounds of the physical fields: far beyond any real microscope, low enough that no
# later computation overflows (a wavelength of 1e300 um would).
MAXIMA = {
    "wavelength_um": 100.0,
    "magnification": 10_000.0,
    "camera_pixel_um": 10_000.0,
    "led_pitch_mm": 10_000.0,
    "led_height_mm": 100_000.0,
    "exposure_ms": 1e8,
    "intensity": 1e6,
    "led_on_axis": 1e5,
    "tile_center_um": 1e9,
    "camera_offset": 2.0**32,
}

HINTS = {
    "wavelength_um": "give the illumination wavelength in micrometres, e.g. 0.532",
    "magnification": "give the sensor-to-sample magnification, e.g. 4",
    "camera_pixel_um": "give the sensor pixel pitch (after binning) in micrometres, e.g. 3.45",
    "led_pitch_mm": "give the nominal LED spacing in millimetres, e.g. 4.0",
    "led_height_mm": "give the LED-plane-to-sample distance in millimetres, e.g. 90",
}

# ------------------------------------------------------------------------------------ optics


def illumination_na(led: Sequence[float], led_on_axis: Sequence[float], pitch_mm: float, height_mm: float) -> float:
    """Nominal illumination NA (sine of the angle to the axis) of the LED at `led` = (row, col)."""
    rho = math.hypot((led[0] - led_on_axis[0]) * pitch_mm, (led[1] - led_on_axis[1]) * pitch_mm)
    return rho / math.hypot(rho, height_mm)


@dataclass(frozen=True)
class Optics:
    """The microscope as it nominally is: objective, camera and LED array (spec section 1 fields).

    Validated on construction (`DatasetError` names the field and the fix); held once by a
    dataset's metadata, the acquisition's microscope description and the simulator's settings.
    """

    wavelength_um: float = 0.532
    objective_na: float = 0.1
    magnification: float = 2.0
    camera_pixel_um: float = 3.69
    led_pitch_mm: float = 4.0
    led_height_mm: float = 90.0
    led_array_shape: tuple[int, int] = (32, 32)
    led_on_axis: tuple[float, float] = (16.0, 16.0)

    def __post_init__(self) -> None:
        setter = object.__setattr__
        for name, hint in HINTS.items():
            setter(self, name, at_most(positive(getattr(self, name), name, hint), MAXIMA[name], name, hint))
        na = number(self.objective_na, "objective_na", "e.g. 0.1")
        if not 0 < na < 1:
            raise DatasetError(
                f"objective_na must be in (0, 1) (got {self.objective_na!r}): give the "
                "objective's numerical aperture, e.g. 0.1 (dry objectives only)"
            )
        setter(self, "objective_na", na)
        shape_hint = "give the LED array size as [rows, cols], e.g. [32, 32]"
        rows, cols = pair(self.led_array_shape, "led_array_shape", shape_hint)
        side = MAX_LED_ARRAY_SIDE
        if rows != int(rows) or cols != int(cols) or not (1 <= rows <= side and 1 <= cols <= side):
            raise DatasetError(
                f"led_array_shape must be two integers 1 to {MAX_LED_ARRAY_SIDE} (got {self.led_array_shape!r}): "
                + shape_hint
            )
        setter(self, "led_array_shape", (int(rows), int(cols)))
        axis_hint = "give the [row, col] index (may be fractional, e.g. 15.5) of the LED on the axis"
        axis = pair(self.led_on_axis, "led_on_axis", axis_hint)
        for value in axis:
            at_most(value, MAXIMA["led_on_axis"], "led_on_axis", "check the units")
        setter(self, "led_on_axis", axis)

    @property
    def sample_pixel_um(self) -> float:
        """Sample-plane pixel size: `camera_pixel_um / magnification`."""
        return self.camera_pixel_um / self.magnification

    @property
    def center_led(self) -> RowCol:
        """The LED nearest the optical axis."""
        return (int(round(self.led_on_axis[0])), int(round(self.led_on_axis[1])))

    def illumination_na(self, led: RowCol) -> float:
        return illumination_na(led, self.led_on_axis, self.led_pitch_mm, self.led_height_mm)

    def is_brightfield(self, led: RowCol) -> bool:
        return self.illumination_na(led) < self.objective_na

    def replace(self, **changes: Any) -> Optics:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The spec's flat JSON fields."""
        out = {name: getattr(self, name) for name in OPTICS_FIELDS}
        out["led_array_shape"] = list(self.led_array_shape)
        out["led_on_axis"] = list(self.led_on_axis)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Optics:
        """The optics fields of a flat mapping (other keys ignored; missing ones take the defaults)."""
        return cls(**{name: data[name] for name in OPTICS_FIELDS if name in data})

    @staticmethod
    def split(values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """(optics fields, the rest) of a flat mapping."""
        optics = {k: v for k, v in values.items() if k in OPTICS_FIELDS}
        return optics, {k: v for k, v in values.items() if k not in OPTICS_FIELDS}


OPTICS_FIELDS = tuple(f.name for f in dataclasses.fields(Optics))


_T = TypeVar("_T", bound="HasOptics")


class HasOptics:
    """For a frozen dataclass holding an `optics` field: its fields read under their spec names
    (`meta.wavelength_um`), and `replace` that takes them by those names too."""

    optics: Optics

    def replace(self: _T, **changes: Any) -> _T:
        """A validated copy with some fields changed (`dataclasses.replace`); optics fields by
        their own names (`meta.replace(wavelength_um=0.63)`)."""
        optics, rest = Optics.split(changes)
        if optics:
            rest["optics"] = self.optics.replace(**optics)
        return dataclasses.replace(self, **rest)  # type: ignore[type-var]

    @property
    def wavelength_um(self) -> float:
        return self.optics.wavelength_um

    @property
    def objective_na(self) -> float:
        return self.optics.objective_na

    @property
    def magnification(self) -> float:
        return self.optics.magnification

    @property
    def camera_pixel_um(self) -> float:
        return self.optics.camera_pixel_um

    @property
    def led_pitch_mm(self) -> float:
        return self.optics.led_pitch_mm

    @property
    def led_height_mm(self) -> float:
        return self.optics.led_height_mm

    @property
    def led_array_shape(self) -> tuple[int, int]:
        return self.optics.led_array_shape

    @property
    def led_on_axis(self) -> tuple[float, float]:
        return self.optics.led_on_axis

    @property
    def sample_pixel_um(self) -> float:
        """Sample-plane pixel size: `camera_pixel_um / magnification`."""
        return self.optics.sample_pixel_um

    @property
    def center_led(self) -> RowCol:
        """The LED nearest the optical axis."""
        return self.optics.center_led

    def illumination_na(self, led: RowCol) -> float:
        return self.optics.illumination_na(led)

    def is_brightfield(self, led: RowCol) -> bool:
        return self.optics.is_brightfield(led)


@dataclass(frozen=True)
class Glass:
    """A slide between the LED array and the sample; it refracts the illumination."""

    thickness_mm: float
    refractive_index: float

    def __post_init__(self) -> None:
        thickness = number(self.thickness_mm, "glass.thickness_mm", "slide thickness in mm")
        if thickness < 0:
            raise DatasetError(
                f"glass.thickness_mm must be >= 0 (got {self.thickness_mm!r}): "
                "give the slide thickness in millimetres, e.g. 1.0"
            )
        index = number(self.refractive_index, "glass.refractive_index", "e.g. 1.52")
        if index < 1:
            raise DatasetError(
                f"glass.refractive_index must be >= 1 (got {self.refractive_index!r}): typical slide glass is 1.52"
            )
        object.__setattr__(self, "thickness_mm", thickness)
        object.__setattr__(self, "refractive_index", index)

    def to_dict(self) -> dict[str, float]:
        return {"thickness_mm": self.thickness_mm, "refractive_index": self.refractive_index}

    @classmethod
    def from_dict(cls, data: Any) -> Glass:
        if not isinstance(data, Mapping):
            raise DatasetError(f"glass must be an object {{'thickness_mm': t, 'refractive_index': n}} (got {data!r})")
        for key in ("thickness_mm", "refractive_index"):
            if key not in data:
                raise DatasetError(f"glass.{key} is missing: glass needs thickness_mm and refractive_index")
        unknown = set(data) - {"thickness_mm", "refractive_index"}
        if unknown:
            raise DatasetError(
                f"glass has unknown fields {sorted(unknown)}: only thickness_mm and refractive_index are allowed"
            )
        return cls(data["thickness_mm"], data["refractive_index"])


# ------------------------------------------------------------------------------ LED geometry


@dataclass(frozen=True)
class LedGeometry:
    """Misalignment of the LED array (spec section 2): rotate, then shift; height above sample."""

    shift_x_mm: float = 0.0
    shift_y_mm: float = 0.0
    rotation_deg: float = 0.0
    height_mm: float = 90.0

    def __post_init__(self) -> None:
        for name, limit in (("shift_x_mm", 1e4), ("shift_y_mm", 1e4), ("rotation_deg", 360.0)):
            value = number(getattr(self, name), f"led_geometry.{name}")
            object.__setattr__(self, name, at_most(value, limit, f"led_geometry.{name}", "check the calibration"))
        hint = "give the LED-plane-to-sample distance in millimetres"
        height = positive(self.height_mm, "led_geometry.height_mm", hint)
        object.__setattr__(self, "height_mm", at_most(height, 1e5, "led_geometry.height_mm", hint))

    def to_dict(self) -> dict[str, float]:
        return {
            "shift_x_mm": self.shift_x_mm,
            "shift_y_mm": self.shift_y_mm,
            "rotation_deg": self.rotation_deg,
            "height_mm": self.height_mm,
        }

    @classmethod
    def from_dict(cls, data: Any) -> LedGeometry:
        if not isinstance(data, Mapping):
            raise DatasetError(
                f"led_geometry must be an object {{shift_x_mm, shift_y_mm, rotation_deg, height_mm}} (got {data!r})"
            )
        known = {"shift_x_mm", "shift_y_mm", "rotation_deg", "height_mm"}
        unknown = set(data) - known
        if unknown:
            raise DatasetError(f"led_geometry has unknown fields {sorted(unknown)}: allowed are {sorted(known)}")
        if "height_mm" not in data:
            raise DatasetError("led_geometry.height_mm is missing: give the LED height in mm")
        return cls(**{key: data[key] for key in known if key in data})


def led_positions_mm(
    leds_row_col: Any,
    led_on_axis: Sequence[float],
    pitch_mm: float,
    *,
    shift_x_mm: Any = 0.0,
    shift_y_mm: Any = 0.0,
    rotation_deg: Any = 0.0,
) -> Any:
    """(..., 2) [X, Y] in mm of LEDs given as (..., 2) [row, col] indices (spec section 2).

    Nominally X = (col - c0) pitch, Y = (row - r0) pitch (x along frame columns, y along rows);
    the misalignment rotates counter-clockwise by `rotation_deg`, then shifts. A numpy array
    gives a numpy array; a torch tensor (and tensor geometry, e.g. a batch of candidates shaped
    to broadcast) gives a tensor, differentiable in the geometry.
    """
    row0, col0 = led_on_axis
    if not hasattr(leds_row_col, "shape"):
        leds_row_col = np.asarray(leds_row_col, dtype=np.float64).reshape(-1, 2)
    x = (leds_row_col[..., 1] - col0) * pitch_mm
    y = (leds_row_col[..., 0] - row0) * pitch_mm
    placed = not all(isinstance(v, (int, float)) and v == 0 for v in (shift_x_mm, shift_y_mm, rotation_deg))
    if placed:
        theta = rotation_deg * (math.pi / 180.0)
        if hasattr(theta, "cos"):  # a tensor
            cos, sin = theta.cos(), theta.sin()
        else:
            cos, sin = np.cos(theta), np.sin(theta)
        x, y = x * cos - y * sin + shift_x_mm, x * sin + y * cos + shift_y_mm
    if isinstance(x, (np.ndarray, np.generic)) and isinstance(y, (np.ndarray, np.generic)):
        return np.stack(np.broadcast_arrays(x, y), axis=-1)
    import torch  # a tensor was given: torch is loaded already

    return torch.stack(torch.broadcast_tensors(torch.as_tensor(x), torch.as_tensor(y)), dim=-1)
