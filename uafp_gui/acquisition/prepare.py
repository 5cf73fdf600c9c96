"""Everything an acquisition does before its first frame: check the output path, read what a
resumed file holds, validate the plan against the microscope and the LED array, set the ROI, take
the dark frame, meter the exposures per NA ring, warm the camera up, and open the dataset writer.

`prepare(core, engine, request)` returns the `Prepared` run (writer, metadata, and the plan and
microscope in force, which a resumed file's stored ones replace); errors are typed and raised before
the first frame, most of them before anything moves.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from uafp_gui.acquisition.mda_engine import FpEngine, TriggerWiring
from uafp_gui.acquisition.plan import PLAN_KEY, AcquisitionPlan, MicroscopeDescription, dataset_meta
from uafp_gui.devices.interfaces import PreparesForRun
from uafp_gui.devices.mm_led import LED_DEVICE_LABEL
from uafp_gui.devices.pydevices import python_device
from uafp_gui.errors import DatasetError, DeviceError, UafpError

if TYPE_CHECKING:  # pragma: no cover
    from uafp_gui.devices.interfaces import LedArray
    from uafp_gui.io.schema import DatasetMeta
    from uafp_gui.io.writer import DatasetWriter

__all__ = [
    "Prepared",
    "RunRequest",
    "apply_roi",
    "check_output_path",
    "meter_exposures",
    "prepare",
    "warm_up_camera",
]


def check_output_path(path: Path, resume: bool) -> None:
    """Fail before the camera runs, not after, when the dataset cannot be written."""
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise DatasetError(f"--out {path} is a folder: give a .tif file name")
    if not folder.is_dir():
        raise DatasetError(f"cannot write {path}: no folder {folder}; create it or choose another --out")
    if path.exists() and resume:
        if not os.access(path, os.R_OK | os.W_OK):
            raise DatasetError(f"cannot resume {path}: no permission to write it; choose another --out")
    elif not os.access(folder, os.W_OK | os.X_OK):
        raise DatasetError(f"cannot write {path}: no permission to write in {folder}; choose another --out")



def default_writer_factory(path: Path, meta: DatasetMeta | None, resume: bool, overwrite: bool) -> DatasetWriter:
    from uafp_gui.io.writer import DatasetWriter

    return DatasetWriter(path, meta, resume=resume, overwrite=overwrite)


@dataclass
class RunRequest:
    """What the caller asked for (`Acquisition`'s arguments)."""

    out_path: Path
    plan: AcquisitionPlan | None
    microscope: MicroscopeDescription | None
    led_array: LedArray | None = None
    resume: bool = False
    overwrite: bool = False
    led_device: str = LED_DEVICE_LABEL
    camera_offset: float | None = None
    notes: str = ""
    extra_meta: dict[str, Any] = field(default_factory=dict)
    writer_factory: Callable[..., DatasetWriter] = default_writer_factory
    trigger_wiring: str = "closed_loop"
    metered_leds_per_ring: int = 4


@dataclass
class Prepared:
    """A run ready for its first frame."""

    writer: DatasetWriter
    meta: DatasetMeta
    plan: AcquisitionPlan | None
    microscope: MicroscopeDescription | None
    ring_exposures_ms: dict[int, float] | None = None


def apply_roi(core: Any, plan: AcquisitionPlan, microscope: MicroscopeDescription) -> tuple[float, float]:
    """Set the plan's ROI on the camera; return the tile centre (um) relative to the sensor centre."""
    core.clearROI()
    height, width = int(core.getImageHeight()), int(core.getImageWidth())
    if plan.roi is None:
        return (0.0, 0.0)
    x, y, w, h = plan.roi
    if x + w > width or y + h > height:
        raise DeviceError(f"ROI {plan.roi} exceeds the {width}x{height} sensor")
    try:
        core.setROI(x, y, w, h)
    except Exception as error:
        raise DeviceError(f"the camera refused ROI {plan.roi}: {error}") from error
    pixel = microscope.sample_pixel_um
    return ((x + w / 2 - width / 2) * pixel, (y + h / 2 - height / 2) * pixel)


def meter_exposures(
    engine: FpEngine,
    plan: AcquisitionPlan,
    microscope: MicroscopeDescription,
    offset: float,
    bit_depth: int,
    *,
    led_device: str = LED_DEVICE_LABEL,
    leds_per_ring: int = 4,
) -> dict[int, float]:
    """Automatic exposure per NA ring: meter the ring's lowest-NA LEDs (the brightest: a hidden
    misalignment can make them bright field) and set the exposure so the brightest pixels
    (99.9th percentile) reach the target fraction of full scale."""
    full_scale = 2**bit_depth - 1
    target = plan.auto_exposure_target * (full_scale - offset)
    rings: dict[int, list[tuple[int, int]]] = {}
    for led in plan.led_sequence(microscope):
        rings.setdefault(plan.ring_of(led, microscope), []).append(led)
    exposures: dict[int, float] = {}
    for ring, members in sorted(rings.items()):
        metered = sorted(members, key=microscope.illumination_na)[: leds_per_ring]
        exposure = plan.nominal_exposure_ms(metered[0], microscope)
        for _ in range(8):  # shorten while saturated, lengthen while lost in noise
            engine.set_exposure(exposure)
            peak = brightest = 0.0
            for led in metered:
                engine.set_leds([led], led_device)
                image = engine.snap()
                peak = max(peak, float(np.percentile(image, 99.9)))
                brightest = max(brightest, float(image.max()))
            # Any clipped pixel (not only the 99.9th percentile) means too long: clipped data is lost data.
            if brightest >= full_scale and exposure > 1e-3:
                exposure /= 4
                continue
            signal = max(peak - offset, 1e-6)
            proposed = min(exposure * target / signal, plan.max_exposure_ms)
            # and the brightest pixel must stay below 90 % of full scale at the exposure proposed
            proposed = min(proposed, exposure * 0.9 * (full_scale - offset) / max(brightest - offset, 1e-6))
            if signal < 0.02 * target and proposed > exposure and exposure < plan.max_exposure_ms:
                exposure = proposed  # too dim to trust one reading: measure again there
                continue
            exposure = proposed
            break
        exposures[ring] = float(f"{exposure:.4g}")
    engine.set_leds([], led_device)
    return exposures


def configure_triggering(engine: FpEngine, plan: AcquisitionPlan, request: RunRequest) -> None:
    """Hardware-triggered plans: check the LED array can run sequences before anything moves."""
    engine.hardware_triggered = plan.hardware_triggered
    engine.trigger_wiring = TriggerWiring(request.trigger_wiring)
    engine.led_array = request.led_array
    engine.led_device = request.led_device
    if plan.hardware_triggered:
        engine.frames_to_average = plan.frames_to_average
        engine.sequence_limit()  # raises ConfigError without a sequence-capable array


def warm_up_camera(core: Any, leds: Iterable[tuple[int, int]]) -> None:
    """Let a camera that `PreparesForRun` get ready for these LEDs (keeps the first snaps fast)."""
    camera = python_device(core, core.getCameraDevice())
    if isinstance(camera, PreparesForRun):
        camera.prepare(list(leds))


def take_dark_frame(engine: FpEngine, plan: AcquisitionPlan, out_path: Path, led_device: str) -> dict[str, Any]:
    """All LEDs off, one frame at the bright-field exposure, saved beside the dataset; its summary
    (`mean_counts` becomes the camera offset)."""
    import tifffile

    engine.set_leds([], led_device)
    engine.set_exposure(plan.brightfield_exposure_ms)
    dark = engine.snap()
    dark_path = out_path.with_name(out_path.stem + "_dark.tif")
    tifffile.imwrite(dark_path, np.asarray(dark))
    return {
        "file": dark_path.name,
        "exposure_ms": plan.brightfield_exposure_ms,
        "mean_counts": float(np.mean(dark)),
        "std_counts": float(np.std(dark)),
    }


def _prepare_resume(core: Any, engine: FpEngine, request: RunRequest) -> Prepared | None:
    """The run that completes an interrupted file (None: nothing readable there, start anew)."""
    from uafp_gui.io.dataset import read_dataset_meta

    plan, microscope = request.plan, request.microscope
    try:
        stored = read_dataset_meta(request.out_path)
    except DatasetError:
        if plan is None or microscope is None:
            raise
        return None
    if PLAN_KEY in stored.extra:
        plan = AcquisitionPlan.from_dict(stored.extra[PLAN_KEY])
    if "microscope" in stored.extra:
        microscope = MicroscopeDescription.from_dict(stored.extra["microscope"])
    if plan is not None and plan.roi is not None and microscope is not None:
        apply_roi(core, plan, microscope)
    engine.frames_to_average = plan.frames_to_average if plan else 1
    if plan is not None:
        configure_triggering(engine, plan, request)
    writer = request.writer_factory(request.out_path, None, True, False)
    warm_up_camera(core, (led for spec in writer.meta.frames[writer.frames_present :] for led in spec.leds))
    return Prepared(writer, writer.meta, plan, microscope)


def prepare(core: Any, engine: FpEngine, request: RunRequest) -> Prepared:
    """Resume `request.out_path` or set up a new run of `request.plan`; typed errors before any frame."""
    from uafp_gui.devices.micromanager import camera_bit_depth, camera_offset

    if request.resume and request.out_path.exists():
        resumed = _prepare_resume(core, engine, request)
        if resumed is not None:
            return resumed
    plan, microscope, led_array = request.plan, request.microscope, request.led_array
    if plan is None or microscope is None:
        raise UafpError(f"nothing to resume at {request.out_path}: give a plan to start a new acquisition")
    if led_array is not None and tuple(microscope.led_array_shape) != tuple(led_array.shape):
        raise DeviceError(
            f"the LED array is {led_array.shape[0]}x{led_array.shape[1]} but the microscope "
            f"description says {microscope.led_array_shape[0]}x{microscope.led_array_shape[1]}"
        )
    plan.led_sequence(microscope)  # validates before touching hardware
    configure_triggering(engine, plan, request)
    if request.out_path.exists() and not request.overwrite and not request.resume:
        raise DatasetError(
            f"{request.out_path} already exists: choose another --out, pass --overwrite, or --resume to "
            "complete an interrupted acquisition"
        )
    engine.frames_to_average = plan.frames_to_average
    tile_center = apply_roi(core, plan, microscope)
    bit_depth = camera_bit_depth(core)
    offset = request.camera_offset
    if offset is None:
        offset = camera_offset(core) or 0.0
    extra = dict(request.extra_meta)
    if plan.hardware_triggered:
        extra["hardware_trigger"] = {"wiring": request.trigger_wiring, "sequence_max_frames": engine.sequence_limit()}
    if plan.dark_frame:
        extra["dark_frame"] = take_dark_frame(engine, plan, request.out_path, request.led_device)
        offset = extra["dark_frame"]["mean_counts"]
    ring_exposures = None
    warm_up_camera(core, plan.led_sequence(microscope))
    if plan.auto_exposure:
        ring_exposures = meter_exposures(
            engine, plan, microscope, offset, bit_depth,
            led_device=request.led_device, leds_per_ring=request.metered_leds_per_ring,
        )  # fmt: skip
        extra["auto_exposure_ms"] = {str(k): v for k, v in ring_exposures.items()}
    specs = plan.frame_specs(microscope, ring_exposures)
    warm_up_camera(core, (led for spec in specs for led in spec.leds))
    meta = dataset_meta(
        plan,
        microscope,
        specs,
        camera_offset=offset,
        bit_depth=bit_depth,
        tile_center_um=tile_center,
        notes=request.notes,
        extra=extra,
    )
    writer = request.writer_factory(request.out_path, meta, False, request.overwrite)
    return Prepared(writer, meta, plan, microscope, ring_exposures)
