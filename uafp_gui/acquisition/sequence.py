"""FP frames as useq-schema events: what the MDA engine (`uafp_gui.acquisition.mda_engine.FpEngine`)
acquires.

- `frame_events(specs)`: one `MDAEvent` per frame of a dataset's frame list: the LED device's
  `Pattern` in `properties`, the exposure, and `metadata` `uafp_frame` (its dataset index) and
  `uafp_leds` (its LED pattern). `Acquisition` runs these through pymmcore-plus's runner.
- `fp_sequence(plan, microscope)`: the same as a plain `useq.MDASequence`, for users who drive their
  microscope from pymmcore-plus, pymmcore-widgets or napari-micromanager:

      seq = fp_sequence(plan, microscope, core=core)
      core.mda.set_engine(FpEngine(core))
      core.mda.run(seq, output=[DatasetSink("run.tif"), "run.ome.tif"])

  It is one time point per frame (`time_plan` loops = frames, interval 0) whose `metadata["uafp"]`
  holds the complete dataset metadata (docs/dataset_format.md: every frame's LEDs and exposure), so
  the sequence is self-describing: any writer that stores the sequence (pymmcore-plus puts it in its
  OME-TIFF/OME-Zarr summary metadata) stores the LED pattern of every frame too. `FpEngine` expands
  its time points into the frames' events (`fp_events`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from uafp_gui.acquisition.plan import AcquisitionPlan, MicroscopeDescription, dataset_meta
from uafp_gui.devices.mm_led import LED_DEVICE_LABEL, PATTERN_PROPERTY, format_pattern
from uafp_gui.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import useq

    from uafp_gui.io.schema import FrameSpec

UAFP_KEY = "uafp"

__all__ = ["UAFP_KEY", "dataset_meta_of", "fp_events", "fp_sequence", "frame_events", "is_fp_sequence", "sequence_for"]


def frame_events(
    specs: Iterable[FrameSpec], *, start: int = 0, led_device: str = LED_DEVICE_LABEL
) -> list[useq.MDAEvent]:
    """One useq `MDAEvent` per frame from `start` on: exposure plus the LED device's `Pattern`."""
    import useq

    events = []
    for k, spec in enumerate(specs):
        if k < start:
            continue
        pattern = format_pattern(spec.leds)
        # model_validate: useq's typed fields (ReadOnlyDict, PropertyTuple) from plain values
        events.append(
            useq.MDAEvent.model_validate(
                {
                    "index": {"t": k},
                    "exposure": spec.exposure_ms,
                    "properties": [(led_device, PATTERN_PROPERTY, pattern)],
                    "metadata": {"uafp_frame": k, "uafp_leds": pattern},
                }
            )
        )
    return events


def is_fp_sequence(events: Any) -> bool:
    """Whether `events` is a sequence from `fp_sequence` (it carries the frame list)."""
    return isinstance((getattr(events, "metadata", None) or {}).get(UAFP_KEY), dict)


def sequence_for(meta: Any, led_device: str = LED_DEVICE_LABEL) -> Any:
    """The `useq.MDASequence` acquiring the frames of dataset metadata `meta` (a `DatasetMeta`)."""
    import useq

    return useq.MDASequence.model_validate(
        {
            "time_plan": {"interval": 0, "loops": len(meta.frames)},
            "metadata": {UAFP_KEY: {"dataset": meta.to_dict(), "led_device": led_device}},
        }
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
            "uafp_gui.acquisition.sequence.fp_sequence(plan, microscope)"
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
