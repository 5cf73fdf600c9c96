"""Acquisition plans: which LEDs, in which order, with which exposure (typed, saved with the data).

An `AcquisitionPlan` says what to acquire; a `MicroscopeDescription` says what the microscope
nominally is (optics, LED array geometry). Together they give the dataset's frames
(`frame_specs`) and metadata (`dataset_meta`); the plan itself is stored in the dataset's
metadata under `acquisition_plan`, so `--resume` and anyone reading the file know how it was
taken.

LED sets: `square` (n x n block around the LED on the axis), `disk` (every LED up to an
illumination NA), `list` (explicit [row, col] pairs). Orders: `spiral` (square spiral from the
centre outward, the classic FP order), `na` (by increasing illumination NA), `as_given`.
Exposure: one bright-field exposure, a dark-field exposure (LEDs whose illumination NA exceeds
the objective NA), or `auto_exposure`: before the run one LED per NA ring is metered and its
ring's exposure set so the brightest pixels reach `auto_exposure_target` of full scale.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from uafp_gui.errors import ConfigError, DatasetError
from uafp_gui.model import OPTICS_FIELDS, Glass, HasOptics, Optics, RowCol
from uafp_gui.physics.patterns import disk_leds, spiral_order, square_leds

__all__ = [
    "LED_SETS",
    "ORDERS",
    "PLAN_FORMAT",
    "PLAN_KEY",
    "AcquisitionPlan",
    "MicroscopeDescription",
    "parse_led_set",
]

PLAN_FORMAT = "uafp-acquisition-plan"
PLAN_VERSION = 1
PLAN_KEY = "acquisition_plan"  # key of the plan in the dataset metadata
LED_SETS = ("square", "disk", "list")
ORDERS = ("spiral", "na", "as_given")

from uafp_gui.limits import MAX_PLAN_LEDS  # noqa: E402


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class MicroscopeDescription(HasOptics):
    """The microscope as it nominally is: what a dataset's metadata needs besides the frames.

    Its optics (`Optics`, read as `microscope.wavelength_um` etc.), the slide's glass and the
    sample. Stored in the dataset's metadata as one flat object (`to_dict`, `from_dict`).
    """

    optics: Optics = field(default_factory=Optics)
    glass: Glass | None = None
    sample: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.optics, Mapping):
            object.__setattr__(self, "optics", _optics(self.optics))
        elif not isinstance(self.optics, Optics):
            raise ConfigError(f"optics must be an Optics (got {type(self.optics).__name__})")
        if self.glass is not None and not isinstance(self.glass, Glass):
            try:
                object.__setattr__(self, "glass", Glass.from_dict(self.glass))
            except DatasetError as error:
                raise ConfigError(str(error)) from None
        if not isinstance(self.sample, str):
            raise ConfigError(f"sample must be a string (got {self.sample!r})")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MicroscopeDescription:
        """From the flat object `to_dict` writes (optics fields, `glass`, `sample`); `ConfigError`
        names an unknown or invalid field."""
        optics, rest = Optics.split(data)
        unknown = set(rest) - {"glass", "sample"}
        if unknown:
            known = sorted((*OPTICS_FIELDS, "glass", "sample"))
            raise ConfigError(f"unknown microscope fields {sorted(unknown)}; known: {known}")
        return cls(optics=_optics(optics), **rest)

    @classmethod
    def from_simulation(cls, settings: Any) -> MicroscopeDescription:
        """The *nominal* microscope of a simulation (its hidden errors stay hidden)."""
        return cls(
            optics=settings.optics,
            sample="uafp_gui built-in test sample (resolution target and cells), simulated microscope",
        )

    def to_dict(self) -> dict[str, Any]:
        glass = self.glass.to_dict() if self.glass is not None else None
        return {**self.optics.to_dict(), "glass": glass, "sample": self.sample}


def _optics(values: Mapping[str, Any]) -> Optics:
    """`Optics` of user-given values; an invalid one is a `ConfigError` (a setting, not a file)."""
    try:
        return Optics(**values)
    except DatasetError as error:
        raise ConfigError(str(error)) from None
    except TypeError as error:  # a field that is not an optics field
        raise ConfigError(f"microscope: {error}") from None


def parse_led_set(text: str) -> dict[str, Any]:
    """CLI text -> plan fields: "15x15" (square), "disk:0.3" (illumination NA), or
    "list:FILE.json" / "list:r,c;r,c" (explicit)."""
    text = text.strip()
    if text.startswith("disk:"):
        try:
            return {"led_set": "disk", "max_illumination_na": float(text[5:])}
        except (ValueError, OverflowError):
            raise ConfigError(f"--leds {text!r}: write disk:NA, e.g. disk:0.3") from None
    if text.startswith("list:"):
        body = text[5:]
        if body.endswith(".json"):
            from uafp_gui.io.jsontext import parse_json

            try:
                leds = parse_json(Path(body).read_bytes(), f"--leds {body}", ConfigError)
            except OSError as error:
                raise ConfigError(f"--leds {text!r}: cannot read the LED list: {error.strerror or error}") from None
        else:
            try:
                leds = [[int(v) for v in item.split(",")] for item in body.split(";") if item.strip()]
                if any(len(led) != 2 for led in leds):
                    raise ValueError("not row,col pairs")
            except ValueError:
                raise ConfigError(f"--leds {text!r}: write list:r,c;r,c or list:FILE.json") from None
        return {"led_set": "list", "leds": leds}
    parts = text.lower().split("x")
    if len(parts) == 2 and parts[0] == parts[1] and parts[0].isascii() and parts[0].isdigit():
        largest = math.isqrt(MAX_PLAN_LEDS)
        if len(parts[0]) > 4 or int(parts[0]) > largest:
            raise ConfigError(f"--leds {text[:40]!r}: at most {largest}x{largest} LEDs ({MAX_PLAN_LEDS} frames)")
        return {"led_set": "square", "square_size": int(parts[0])}
    raise ConfigError(
        f"--leds {text!r} is not understood: use NxN (a square, e.g. 15x15), disk:NA (e.g. disk:0.3) "
        "or list:r,c;r,c / list:FILE.json"
    )


@dataclass(frozen=True)
class AcquisitionPlan:
    """What to acquire. Validated on construction (`ConfigError` names the bad field)."""

    led_set: str = "square"
    square_size: int = 15
    max_illumination_na: float | None = None
    leds: tuple[RowCol, ...] = ()
    order: str = "spiral"
    brightfield_exposure_ms: float = 10.0
    darkfield_exposure_ms: float | None = None
    auto_exposure: bool = False
    auto_exposure_target: float = 0.5
    auto_exposure_ring_na: float = 0.05
    max_exposure_ms: float = 2000.0
    dark_frame: bool = False
    frames_to_average: int = 1
    roi: tuple[int, int, int, int] | None = None
    hardware_triggered: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.led_set not in LED_SETS:
            raise ConfigError(f"led_set must be one of {LED_SETS} (got {self.led_set!r})")
        if self.order not in ORDERS:
            raise ConfigError(f"order must be one of {ORDERS} (got {self.order!r})")
        size = self.square_size
        largest = math.isqrt(MAX_PLAN_LEDS)
        if self.led_set == "square" and (
            isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= largest
        ):
            raise ConfigError(
                f"square_size must be a whole number 1 to {largest} (got {str(size)[:20]}): a plan holds at most "
                f"{MAX_PLAN_LEDS} frames"
            )
        if self.led_set == "disk":
            na = self.max_illumination_na
            if na is None or not _is_number(na) or not 0 <= na < 1:
                raise ConfigError(f"a disk LED set needs max_illumination_na in [0, 1) (got {na!r})")
        if isinstance(self.leds, (str, bytes)) or not isinstance(self.leds, (list, tuple)):
            raise ConfigError(f"leds must be a list of [row, col] pairs (got {str(self.leds)[:40]})")
        if len(self.leds) > MAX_PLAN_LEDS:
            raise ConfigError(f"the LED list has {len(self.leds)} entries, more than a plan may hold ({MAX_PLAN_LEDS})")
        if not all(
            isinstance(led, (list, tuple)) and len(led) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and abs(v) <= 10**6 for v in led)
            for led in self.leds
        ):
            raise ConfigError(f"leds must be [row, col] integer pairs (got {str(self.leds)[:60]})")
        leds = tuple((int(r), int(c)) for r, c in self.leds)
        if self.led_set == "list" and not leds:
            raise ConfigError("an explicit LED list is empty: give at least one [row, col]")
        if len(set(leds)) != len(leds):
            raise ConfigError("the LED list names an LED twice")
        object.__setattr__(self, "leds", leds)
        for name in ("brightfield_exposure_ms", "max_exposure_ms"):
            self._positive(name)
        if self.darkfield_exposure_ms is not None:
            self._positive("darkfield_exposure_ms")
        for name in ("auto_exposure", "dark_frame", "hardware_triggered"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false (got {getattr(self, name)!r})")
        if not _is_number(self.auto_exposure_target) or not 0 < self.auto_exposure_target <= 1:
            raise ConfigError(f"auto_exposure_target must be in (0, 1] (got {self.auto_exposure_target!r})")
        self._positive("auto_exposure_ring_na")
        average = self.frames_to_average
        if isinstance(average, bool) or not isinstance(average, int) or not 1 <= average <= 1000:
            raise ConfigError(f"frames_to_average must be a whole number 1 to 1000 (got {str(average)[:20]})")
        if self.roi is not None:
            if isinstance(self.roi, (str, bytes)) or not isinstance(self.roi, (list, tuple)) or not all(
                isinstance(v, int) and not isinstance(v, bool) and abs(v) <= 10**6 for v in self.roi
            ):
                raise ConfigError(f"roi must be [x, y, width, height] in camera pixels (got {str(self.roi)[:40]})")
            roi = tuple(int(v) for v in self.roi)
            if len(roi) != 4 or roi[0] < 0 or roi[1] < 0 or roi[2] < 1 or roi[3] < 1:
                raise ConfigError(f"roi must be [x, y, width, height] with x, y >= 0 and a positive size ({roi})")
            object.__setattr__(self, "roi", roi)
        object.__setattr__(self, "extra", dict(self.extra))

    def _positive(self, name: str) -> None:
        value = getattr(self, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ConfigError(f"{name} must be a positive number (got {value!r})")
        if not math.isfinite(value):
            raise ConfigError(f"{name} must be finite (got {value!r})")

    def replace(self, **changes: Any) -> AcquisitionPlan:
        return replace(self, **changes)

    # ------------------------------------------------------------------------ LEDs and frames
    def led_sequence(self, microscope: MicroscopeDescription) -> list[RowCol]:
        """The LEDs in acquisition order (one frame each); checked against the array."""
        center = microscope.center_led
        if self.led_set == "square":
            chosen = square_leds(self.square_size, center)
        elif self.led_set == "disk":
            chosen = disk_leds(
                microscope.led_array_shape,
                microscope.led_on_axis,
                microscope.led_pitch_mm,
                microscope.led_height_mm,
                float(self.max_illumination_na or 0.0),  # set: checked on construction
            )
            if not chosen:
                raise ConfigError(f"no LED lies within illumination NA {self.max_illumination_na}")
            if len(chosen) > MAX_PLAN_LEDS:
                raise ConfigError(
                    f"{len(chosen)} LEDs lie within illumination NA {self.max_illumination_na}, more than the "
                    f"{MAX_PLAN_LEDS} frames a plan may hold: choose a smaller NA"
                )
        else:
            chosen = list(self.leds)
        rows, cols = microscope.led_array_shape
        outside = [led for led in chosen if not (0 <= led[0] < rows and 0 <= led[1] < cols)]
        if outside:
            raise ConfigError(
                f"{len(outside)} LED(s) of the plan lie outside the {rows}x{cols} array (first: {outside[0]}): "
                "use a smaller LED set or check led_on_axis"
            )
        if self.order == "spiral":
            return spiral_order(chosen, center)
        if self.order == "na":
            return sorted(chosen, key=lambda led: (round(microscope.illumination_na(led), 12), led))
        return list(chosen)

    def ring_of(self, led: RowCol, microscope: MicroscopeDescription) -> int:
        """Exposure ring: 0 for bright field, 1, 2, ... for dark-field bands `auto_exposure_ring_na` wide."""
        na = microscope.illumination_na(led)
        if na < microscope.objective_na:
            return 0
        return 1 + int((na - microscope.objective_na) // self.auto_exposure_ring_na)

    def nominal_exposure_ms(self, led: RowCol, microscope: MicroscopeDescription) -> float:
        if microscope.is_brightfield(led) or self.darkfield_exposure_ms is None:
            return float(self.brightfield_exposure_ms)
        return float(self.darkfield_exposure_ms)

    def frame_specs(
        self, microscope: MicroscopeDescription, ring_exposures_ms: Mapping[int, float] | None = None
    ) -> list:
        """One `FrameSpec` per LED, in order; `ring_exposures_ms` (from metering) overrides."""
        from uafp_gui.io.schema import FrameSpec

        specs = []
        for led in self.led_sequence(microscope):
            exposure = self.nominal_exposure_ms(led, microscope)
            if ring_exposures_ms is not None:
                exposure = float(ring_exposures_ms.get(self.ring_of(led, microscope), exposure))
            specs.append(FrameSpec(leds=(led,), exposure_ms=exposure))
        return specs

    # ---------------------------------------------------------------------------- (de)serialise
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": PLAN_FORMAT, "version": PLAN_VERSION}
        for item in fields(self):
            if item.name == "extra":
                continue
            value = getattr(self, item.name)
            if item.name == "leds":
                value = [list(led) for led in value]
            elif item.name == "roi" and value is not None:
                value = list(value)
            out[item.name] = value
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, data: Any) -> AcquisitionPlan:
        if not isinstance(data, Mapping):
            raise ConfigError(f"an acquisition plan must be a JSON object (got {type(data).__name__})")
        if data.get("format", PLAN_FORMAT) != PLAN_FORMAT:
            raise ConfigError(f"format is {data.get('format')!r}, expected {PLAN_FORMAT!r}")
        if data.get("version", PLAN_VERSION) != PLAN_VERSION:
            raise ConfigError(f"acquisition plan version {data.get('version')!r} is not {PLAN_VERSION}")
        known = {item.name for item in fields(cls)} - {"extra"}
        kwargs = {key: value for key, value in data.items() if key in known}
        kwargs["extra"] = {k: v for k, v in data.items() if k not in known and k not in ("format", "version")}
        if isinstance(kwargs.get("roi"), list):
            kwargs["roi"] = tuple(kwargs["roi"])
        leds = kwargs.get("leds", ())
        if isinstance(leds, list):
            kwargs["leds"] = tuple(tuple(led) if isinstance(led, list) else led for led in leds)
        try:
            return cls(**kwargs)
        except TypeError as error:
            raise ConfigError(f"invalid acquisition plan: {error}") from None

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def save(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        path.write_text(self.to_json() + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> AcquisitionPlan:
        from uafp_gui.io.jsontext import parse_json

        try:
            data = parse_json(Path(path).read_bytes(), f"acquisition plan {path}", ConfigError)
        except OSError as error:
            raise ConfigError(f"cannot read acquisition plan {path}: {error.strerror or error}") from None
        return cls.from_dict(data)


def dataset_meta(
    plan: AcquisitionPlan,
    microscope: MicroscopeDescription,
    frames: Sequence[Any],
    *,
    camera_offset: float = 0.0,
    bit_depth: int | None = None,
    tile_center_um: tuple[float, float] = (0.0, 0.0),
    notes: str = "",
    extra: Mapping[str, Any] | None = None,
):
    """The dataset metadata of a run of `plan` on `microscope` (the plan stored in it)."""
    from uafp_gui.io.schema import DatasetMeta

    return DatasetMeta(
        optics=microscope.optics,
        frames=tuple(frames),
        tile_center_um=tile_center_um,
        camera_offset=float(camera_offset),
        bit_depth=bit_depth,
        glass=microscope.glass,
        sample=microscope.sample,
        notes=notes,
        extra={PLAN_KEY: plan.to_dict(), "microscope": microscope.to_dict(), **(extra or {})},
    ).stamped()
