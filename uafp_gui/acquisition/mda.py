"""FP acquisition as a useq-schema `MDASequence`, run by pymmcore-plus's own runner (`core.mda.run`).

For users who drive their microscope from pymmcore-plus, pymmcore-widgets or napari-micromanager:

    seq = fp_sequence(plan, microscope, core=core)          # a plain useq.MDASequence
    core.mda.set_engine(FpMdaEngine(core))
    core.mda.run(seq, output=[DatasetSink("run.tif"), "run.ome.tif"])

- `fp_sequence` is one time point per frame (`time_plan` loops = frames, interval 0) whose
  `metadata["uafp"]` holds the complete dataset metadata (docs/dataset_format.md: every frame's LEDs and
  exposure), so the sequence is self-describing: any writer that stores the sequence (pymmcore-plus
  puts it in its OME-TIFF/OME-Zarr summary metadata) stores the LED pattern of every frame too.
- `FpMdaEngine` is the acquisition's strict `FpEngine` as a pymmcore-plus engine: it expands each
  time point into the frame's `MDAEvent` -- the LED device's `Pattern` in `properties`, the
  exposure, and `metadata` `uafp_frame` / `uafp_leds` (the LED pattern of that event) -- returns
  pymmcore-plus's summary metadata and adds its frame metadata, so pymmcore-plus's own writers and
  viewers work unchanged.
- `DatasetSink` is a pymmcore-plus data handler (`sequenceStarted` / `frameReady` /
  `sequenceFinished`) that writes the frames into a uafp dataset TIFF as they arrive (crash-safe,
  `DatasetWriter`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from uafp_gui.acquisition.engine import FpEngine
from uafp_gui.acquisition.plan import AcquisitionPlan, MicroscopeDescription, dataset_meta
from uafp_gui.devices.mm_led import LED_DEVICE_LABEL, PATTERN_PROPERTY, format_pattern
from uafp_gui.errors import ConfigError, DatasetError

UAFP_KEY = "uafp"

__all__ = ["UAFP_KEY", "DatasetSink", "FpMdaEngine", "dataset_meta_of", "fp_events", "fp_sequence", "sequence_for"]


def sequence_for(meta: Any, led_device: str = LED_DEVICE_LABEL) -> Any:
    """The `useq.MDASequence` acquiring the frames of dataset metadata `meta` (a `DatasetMeta`)."""
    import useq

    return useq.MDASequence(
        time_plan={"interval": 0, "loops": len(meta.frames)},
        metadata={UAFP_KEY: {"dataset": meta.to_dict(), "led_device": led_device}},
    )


def fp_sequence(
    plan: AcquisitionPlan,
    microscope: MicroscopeDescription,
    *,
    core: Any = None,
    camera_offset: float | None = None,
    notes: str = "",
    led_device: str = LED_DEVICE_LABEL,
) -> Any:
    """The `MDASequence` of `plan` on `microscope`; with `core`, the camera's bit depth and dark
    offset go into the dataset metadata."""
    bit_depth = None
    if core is not None:
        from uafp_gui.devices.micromanager import camera_bit_depth
        from uafp_gui.devices.micromanager import camera_offset as core_offset

        bit_depth = camera_bit_depth(core)
        if camera_offset is None:
            camera_offset = core_offset(core)
    meta = dataset_meta(
        plan,
        microscope,
        plan.frame_specs(microscope),
        camera_offset=camera_offset or 0.0,
        bit_depth=bit_depth,
        notes=notes or "acquired as a useq MDASequence through pymmcore-plus (core.mda.run)",
    )
    return sequence_for(meta, led_device)


def dataset_meta_of(sequence: Any) -> Any:
    """The `DatasetMeta` a sequence from `fp_sequence` carries (`ConfigError` for other sequences)."""
    from uafp_gui.io.schema import DatasetMeta

    info = (getattr(sequence, "metadata", None) or {}).get(UAFP_KEY)
    if not isinstance(info, dict) or "dataset" not in info:
        raise ConfigError(
            "this MDASequence carries no uafp frame list (metadata['uafp']): build it with "
            "uafp_gui.acquisition.mda.fp_sequence(plan, microscope)"
        )
    return DatasetMeta.from_dict(info["dataset"])


def fp_events(sequence: Any) -> Iterator[Any]:
    """The sequence's events, each set up as its FP frame: exposure, the LED device's Pattern, and
    the LED pattern in the event metadata (`uafp_leds`, with `uafp_frame` its dataset index)."""
    meta = dataset_meta_of(sequence)
    led_device = sequence.metadata[UAFP_KEY].get("led_device", LED_DEVICE_LABEL)
    for event in sequence:
        index = int(event.index.get("t", 0))
        spec = meta.frames[index]
        pattern = format_pattern(spec.leds)
        yield event.model_copy(
            update={
                "exposure": spec.exposure_ms,
                "properties": [(led_device, PATTERN_PROPERTY, pattern)],
                "metadata": {**event.metadata, "uafp_frame": index, "uafp_leds": pattern},
            }
        )


class FpMdaEngine(FpEngine):
    """`FpEngine` for pymmcore-plus's runner: expands `fp_sequence` sequences into frame events and
    speaks pymmcore-plus's metadata (summary per sequence, frame metadata per image)."""

    def setup_sequence(self, sequence: Any) -> Any:
        super().setup_sequence(sequence)
        from pymmcore_plus.metadata import summary_metadata

        return summary_metadata(self.mmcore, mda_sequence=sequence)

    def event_iterator(self, events: Iterable[Any]) -> Iterator[Any]:
        metadata = getattr(events, "metadata", None) or {}
        if UAFP_KEY in metadata:
            events = list(fp_events(events))
        return super().event_iterator(events)

    def exec_event(self, event: Any) -> Iterator[tuple[np.ndarray, Any, dict]]:
        from pymmcore_plus.metadata import frame_metadata

        for image, sub_event, extra in super().exec_event(event):
            try:
                meta = dict(
                    frame_metadata(
                        self.mmcore,
                        cached=True,
                        camera_device=self.mmcore.getCameraDevice(),
                        mda_event=sub_event,
                    )
                )
            except Exception:  # noqa: BLE001 - pymmcore-plus's metadata is a courtesy, the frame is not
                meta = {}
            meta.update(extra)
            meta["exposure_ms"] = float(extra.get("exposure_ms") or self.mmcore.getExposure())
            meta["uafp_leds"] = sub_event.metadata.get("uafp_leds", "")
            yield image, sub_event, meta


class DatasetSink:
    """A pymmcore-plus data handler writing an `fp_sequence` acquisition as a uafp dataset TIFF.

    Pass it in `core.mda.run(seq, output=[DatasetSink(path), ...])` (or connect it with
    `mda_listeners_connected`). Each frame is on disk before the next arrives; an interrupted
    run leaves a valid partial dataset. `error` holds the first problem (pymmcore-plus logs
    exceptions raised in handlers instead of stopping the run), `path` the file.
    """

    def __init__(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        self.path = Path(path)
        self.overwrite = overwrite
        self.writer: Any = None
        self.error: BaseException | None = None
        self.frames_written = 0

    def sequenceStarted(self, sequence: Any, *args: Any) -> None:  # noqa: N802 - pymmcore-plus signal names
        from uafp_gui.io.writer import DatasetWriter

        self.error = None
        self.frames_written = 0
        try:
            meta = dataset_meta_of(sequence)
            self.writer = DatasetWriter(self.path, meta, overwrite=self.overwrite)
        except (ConfigError, DatasetError) as error:
            self.error = error
            raise

    def frameReady(self, image: np.ndarray, event: Any, meta: Any = None) -> None:  # noqa: N802
        if self.writer is None or self.error is not None:
            return
        index = event.metadata.get("uafp_frame")
        if index != self.writer.frames_present:
            self.error = DatasetError(
                f"{self.path}: frame {index} arrived but frame {self.writer.frames_present} was next: the "
                "engine must be FpMdaEngine and the events those of fp_sequence, in order"
            )
            raise self.error
        try:
            self.writer.append(np.asarray(image))
        except DatasetError as error:
            self.error = error
            raise
        self.frames_written = self.writer.frames_present

    def sequenceFinished(self, sequence: Any, *args: Any) -> None:  # noqa: N802
        if self.writer is not None:
            self.writer.close()
