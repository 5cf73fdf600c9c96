"""Acquisition plans and the streaming acquisition engine on the simulated microscope."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from factories import ACQUISITION_MICROSCOPE, ACQUISITION_SIMULATION

from uafp_gui.acquisition.events import AcquisitionFinished, AcquisitionPaused, AcquisitionStarted, FrameAcquired
from uafp_gui.acquisition.mda_engine import FpEngine
from uafp_gui.acquisition.plan import AcquisitionPlan, MicroscopeDescription, parse_led_set
from uafp_gui.acquisition.runner import Acquisition
from uafp_gui.acquisition.sequence import frame_events
from uafp_gui.errors import CameraTimeoutError, ConfigError, DatasetError, DeviceError, LedArrayFailure, WriteFailure
from uafp_gui.io.dataset import PartialDatasetWarning, read_dataset, read_tiff_frames
from uafp_gui.io.writer import DatasetWriter
from uafp_gui.physics.patterns import spiral_order, square_leds
from uafp_gui.simulate import PRESETS
from uafp_gui.simulated.microscope import open_simulated_microscope, simulated_camera

SETTINGS, MICROSCOPE = ACQUISITION_SIMULATION, ACQUISITION_MICROSCOPE
PLAN_5X5 = AcquisitionPlan(square_size=5, brightfield_exposure_ms=2.0)


@pytest.fixture
def microscope():
    core, leds = open_simulated_microscope(SETTINGS, realtime=False)
    yield core, leds
    leds.close()


def read_partial(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PartialDatasetWarning)
        return read_dataset(path)


# ------------------------------------------------------------------------------------- plans


def test_plan_round_trip_and_file(tmp_path):
    plan = AcquisitionPlan(
        led_set="list",
        leds=((16, 16), (16, 17), (3, 4)),
        order="na",
        brightfield_exposure_ms=5,
        darkfield_exposure_ms=50,
        dark_frame=True,
        frames_to_average=3,
        roi=(8, 8, 32, 32),
    )
    assert AcquisitionPlan.from_dict(plan.to_dict()) == plan
    assert AcquisitionPlan.load(plan.save(tmp_path / "plan.json")) == plan
    assert plan.to_dict()["format"] == "uafp-acquisition-plan"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"led_set": "hexagon"}, "led_set"),
        ({"order": "random"}, "order"),
        ({"square_size": 0}, "square_size"),
        ({"led_set": "disk"}, "max_illumination_na"),
        ({"led_set": "list"}, "empty"),
        ({"led_set": "list", "leds": ((1, 1), (1, 1))}, "twice"),
        ({"brightfield_exposure_ms": 0}, "brightfield_exposure_ms"),
        ({"darkfield_exposure_ms": -1}, "darkfield_exposure_ms"),
        ({"frames_to_average": 0}, "frames_to_average"),
        ({"roi": (0, 0, 0, 10)}, "roi"),
        ({"auto_exposure_target": 1.5}, "auto_exposure_target"),
    ],
)
def test_plan_validation_names_the_field(changes, message):
    with pytest.raises(ConfigError, match=message):
        AcquisitionPlan(**changes)


def test_plan_led_sets_and_orders():
    center = MICROSCOPE.center_led
    assert PLAN_5X5.led_sequence(MICROSCOPE) == spiral_order(square_leds(5, center), center)
    by_na = PLAN_5X5.replace(order="na").led_sequence(MICROSCOPE)
    nas = [MICROSCOPE.illumination_na(led) for led in by_na]
    assert by_na[0] == center and nas == sorted(nas)
    disk = AcquisitionPlan(led_set="disk", max_illumination_na=0.1).led_sequence(MICROSCOPE)
    assert all(MICROSCOPE.illumination_na(led) <= 0.1 + 1e-9 for led in disk) and len(disk) == 21
    with pytest.raises(ConfigError, match="outside the 32x32 array"):
        AcquisitionPlan(square_size=40).led_sequence(MICROSCOPE)
    assert parse_led_set("15x15") == {"led_set": "square", "square_size": 15}
    assert parse_led_set("disk:0.3")["max_illumination_na"] == 0.3
    assert parse_led_set("list:1,2;3,4")["leds"] == [[1, 2], [3, 4]]
    with pytest.raises(ConfigError, match="not understood"):
        parse_led_set("15x14")


def test_dark_field_exposure_by_illumination_na():
    plan = PLAN_5X5.replace(darkfield_exposure_ms=20.0)
    for spec in plan.frame_specs(MICROSCOPE):
        led = spec.leds[0]
        assert spec.exposure_ms == (2.0 if MICROSCOPE.is_brightfield(led) else 20.0)


# ------------------------------------------------------------------------------ acquisition


def test_5x5_acquisition_writes_a_dataset_in_plan_order(microscope, tmp_path):
    core, leds = microscope
    out = tmp_path / "run.tif"
    acquisition = Acquisition(core, leds, PLAN_5X5, out, MICROSCOPE)
    published = []
    acquisition.subscribe(published.append)
    events = list(acquisition.run())
    assert isinstance(events[0], AcquisitionStarted) and events[0].total == 25
    frames = [e for e in events if isinstance(e, FrameAcquired)]
    assert [e.index for e in frames] == list(range(25))
    assert isinstance(events[-1], AcquisitionFinished) and events[-1].reason == "completed"
    assert events[-1].frames_written == 25

    dataset = read_dataset(out)
    assert dataset.complete and dataset.frames.shape == (25, 64, 64) and dataset.frames.dtype == np.uint16
    meta = dataset.meta
    assert [f.leds[0] for f in meta.frames] == PLAN_5X5.led_sequence(MICROSCOPE)
    assert all(f.exposure_ms == 2.0 for f in meta.frames)
    assert meta.camera_offset == SETTINGS.camera_offset and meta.bit_depth == SETTINGS.bit_depth
    assert meta.led_height_mm == SETTINGS.led_height_mm  # nominal, not the hidden truth
    assert AcquisitionPlan.from_dict(meta.extra["acquisition_plan"]) == PLAN_5X5
    # the frames on disk are the frames yielded and published: the same arrays, never copied
    for event, message, stored in zip(frames, sorted(published, key=lambda m: m.index), dataset.frames, strict=True):
        assert message.frame is event.frame and not event.frame.flags.writeable
        np.testing.assert_array_equal(stored, event.frame)
    # the centre LED's frame is bright field; the corners of a 5x5 at 90 mm are dark field
    signal_counts = dataset.frames.reshape(25, -1).mean(axis=1) - SETTINGS.camera_offset
    bright = SETTINGS.photons_per_pixel * 2.0 / SETTINGS.exposure_ms  # mean bright-field counts at 2 ms
    assert signal_counts[0] > 0.5 * bright and signal_counts[-1] < 0.3 * signal_counts[0]


def test_the_engine_runs_under_pymmcore_plus_mda(microscope):
    core, leds = microscope
    specs = PLAN_5X5.frame_specs(MICROSCOPE)[:4]
    images = []
    core.mda.set_engine(FpEngine(core))
    core.mda.events.frameReady.connect(lambda image, event, meta: images.append((image.copy(), sorted(leds.lit))))
    core.mda.run(frame_events(specs))
    assert [lit for _, lit in images] == [[spec.leds[0]] for spec in specs]
    bright = SETTINGS.photons_per_pixel * 2.0 / SETTINGS.exposure_ms  # mean bright-field counts at 2 ms
    assert images[0][0].mean() > SETTINGS.camera_offset + 0.5 * bright


def test_the_acquisition_runs_through_pymmcore_plus_runner(microscope, tmp_path):
    """Acquisition drives FpEngine with core.mda.run: pymmcore-plus's own signals see every frame (a
    napari-micromanager viewer would), and the core's previous engine is back afterwards."""
    core, leds = microscope
    previous = core.mda.engine
    seen = []
    core.mda.events.frameReady.connect(lambda image, event, meta: seen.append((event.metadata["uafp_frame"], meta)))
    engines = []
    core.mda.events.sequenceStarted.connect(lambda sequence, meta: engines.append(type(core.mda.engine).__name__))
    finished = Acquisition(core, leds, PLAN_5X5, tmp_path / "run.tif", MICROSCOPE).run_to_end()
    assert finished.frames_written == 25 and engines == ["FpEngine"]
    assert [index for index, _ in seen] == list(range(25))
    planned = PLAN_5X5.frame_specs(MICROSCOPE)
    assert [meta["uafp_leds"] for _, meta in seen] == [f"{r},{c}" for spec in planned for r, c in spec.leds]
    assert all(meta["exposure_ms"] == 2.0 and meta["camera_device"] == "Camera" for _, meta in seen)
    assert core.mda.engine is previous and not core.mda.is_running()


def test_pymmcore_plus_info_log_is_dropped_for_the_runner_thread_only(microscope, tmp_path):
    """pymmcore-plus logs every event at INFO (0.5-0.8 ms a frame): dropped for our runner's thread,
    its warnings kept (a cancelled run's "MDA Canceled")."""
    import logging

    core, leds = microscope
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    logger = logging.getLogger("pymmcore-plus")
    handler = Keep(logging.DEBUG)
    logger.addHandler(handler)
    try:
        acquisition = Acquisition(core, leds, PLAN_5X5, tmp_path / "run.tif", MICROSCOPE)
        for event in acquisition.run():
            if isinstance(event, FrameAcquired) and event.index == 2:
                acquisition.cancel()
        logger.info("from another thread")
    finally:
        logger.removeHandler(handler)
    ours = [r for r in records if r.threadName == "uafp-mda"]
    assert ours and all(r.levelno >= logging.WARNING for r in ours)
    assert any("Cancel" in r.getMessage() for r in ours)
    assert any(r.getMessage() == "from another thread" for r in records)
    assert not logger.filters


def test_cancel_and_pause_at_frame_boundaries(microscope, tmp_path):
    core, leds = microscope
    acquisition = Acquisition(core, leds, PLAN_5X5, tmp_path / "run.tif", MICROSCOPE)
    seen = []
    for event in acquisition.run():
        seen.append(event)
        if isinstance(event, FrameAcquired) and event.index == 3:
            acquisition.pause()
        if isinstance(event, AcquisitionPaused):
            assert event.next_index == 4
            acquisition.cancel()
    assert isinstance(seen[-1], AcquisitionFinished) and seen[-1].reason == "cancelled"
    assert seen[-1].frames_written == 4
    assert read_partial(tmp_path / "run.tif").frame_count == 4
    assert not leds.lit  # lights off after the run


def test_resume_acquires_only_the_missing_frames(microscope, tmp_path):
    core, leds = microscope
    out = tmp_path / "run.tif"
    first = Acquisition(core, leds, PLAN_5X5, out, MICROSCOPE)
    for event in first.run():
        if isinstance(event, FrameAcquired) and event.index == 9:
            first.cancel()
    partial = read_partial(out).frames.copy()
    assert partial.shape[0] == 10
    second = Acquisition(core, leds, None, out, None, resume=True)
    events = list(second.run())
    assert events[0].frames_present == 10
    assert [e.index for e in events if isinstance(e, FrameAcquired)] == list(range(10, 25))
    dataset = read_dataset(out)
    assert dataset.complete
    np.testing.assert_array_equal(dataset.frames[:10], partial)


def test_led_array_disconnect_mid_run_keeps_the_frames(microscope, tmp_path):
    core, leds = microscope
    out = tmp_path / "run.tif"
    acquisition = Acquisition(core, leds, PLAN_5X5, out, MICROSCOPE)
    with pytest.raises(LedArrayFailure) as caught:
        for event in acquisition.run():
            if isinstance(event, FrameAcquired) and event.index == 5:
                leds.disconnect()  # the USB cable is pulled
    message = str(caught.value)
    assert "frame 6" in message and "disconnected" in message
    assert "6 of 25 frames are saved" in message and "--resume" not in message  # the CLI's words, not the engine's
    error = caught.value
    assert error.resumable and (error.frames_saved, error.frames_total, error.path) == (6, 25, out)
    dataset = read_partial(out)
    assert dataset.frame_count == 6
    assert [f.leds[0] for f in dataset.meta.frames] == PLAN_5X5.led_sequence(MICROSCOPE)[:6]
    assert acquisition.state == "failed"


def test_led_array_that_stops_answering(microscope, tmp_path):
    core, leds = microscope
    out = tmp_path / "run.tif"
    acquisition = Acquisition(core, leds, PLAN_5X5, out, MICROSCOPE)
    with pytest.raises(DeviceError, match="no complete reply") as caught:
        for event in acquisition.run():
            if isinstance(event, FrameAcquired) and event.index == 2:
                leds.fail_after(0)  # the board hangs
    assert "3 of 25 frames are saved" in str(caught.value)
    assert read_partial(out).frame_count == 3


@pytest.mark.parametrize("hang", [False, True])
def test_camera_timeout_keeps_the_frames(microscope, tmp_path, hang):
    core, leds = microscope
    simulated_camera(core).inject_timeout(after_frames=4, hang=hang)
    out = tmp_path / "run.tif"
    acquisition = Acquisition(core, leds, PLAN_5X5, out, MICROSCOPE, camera_timeout_s=0.5)
    with pytest.raises(DeviceError) as caught:  # a hang would end in pytest-timeout
        list(acquisition.run())
    message = str(caught.value)
    assert "frame 4" in message and "4 of 25 frames are saved" in message
    if hang:  # the watchdog caught a camera that never answered
        assert isinstance(caught.value, CameraTimeoutError) and "delivered no frame within" in message
    else:
        assert "timed out" in message
    assert read_partial(out).frame_count == 4


def test_disk_full_stops_the_run_and_keeps_the_frames(microscope, tmp_path):
    core, leds = microscope

    class FullDisk(DatasetWriter):
        def append(self, frame):
            if self.frames_present == 7:
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().append(frame)

    out = tmp_path / "run.tif"
    acquisition = Acquisition(
        core,
        leds,
        PLAN_5X5,
        out,
        MICROSCOPE,
        writer_factory=lambda path, meta, resume, overwrite: FullDisk(path, meta, resume=resume, overwrite=overwrite),
    )
    with pytest.raises(WriteFailure, match="full") as caught:
        list(acquisition.run())
    assert isinstance(caught.value, DatasetError)
    assert "7 frames written before are kept" in str(caught.value)
    assert caught.value.frames_saved == 7 and caught.value.path == out
    assert read_partial(out).frame_count == 7


def test_existing_output_is_refused(microscope, tmp_path):
    core, leds = microscope
    out = tmp_path / "run.tif"
    out.write_bytes(b"x")
    with pytest.raises(DatasetError, match="already exists"):
        list(Acquisition(core, leds, PLAN_5X5, out, MICROSCOPE).run())


def test_auto_exposure_dark_frame_averaging_and_roi(microscope, tmp_path):
    core, leds = microscope
    plan = AcquisitionPlan(
        square_size=5,
        brightfield_exposure_ms=2.0,
        auto_exposure=True,
        dark_frame=True,
        frames_to_average=2,
        roi=(16, 8, 32, 40),
    )
    out = tmp_path / "run.tif"
    list(Acquisition(core, leds, plan, out, MICROSCOPE).run())
    dataset = read_dataset(out)
    assert dataset.frames.shape == (25, 40, 32) and dataset.frames.dtype == np.float32
    meta = dataset.meta
    rings = {int(k): v for k, v in meta.extra["auto_exposure_ms"].items()}
    assert set(rings) >= {0, 1} and all(rings[ring] > 3 * rings[0] for ring in rings if ring > 0)
    for spec in meta.frames:
        assert spec.exposure_ms == rings[plan.ring_of(spec.leds[0], MICROSCOPE)]
    assert meta.camera_offset == pytest.approx(SETTINGS.camera_offset, abs=0.5)  # from the dark frame
    assert (tmp_path / "run_dark.tif").exists()
    full_scale = 2**SETTINGS.bit_depth - 1
    assert (dataset.frames >= full_scale).mean() < 1e-3  # auto exposure avoided saturation
    pixel = MICROSCOPE.sample_pixel_um
    assert meta.tile_center_um == pytest.approx(((16 + 16 - 32) * pixel, (8 + 20 - 32) * pixel))


KILL_SCRIPT = """
import sys
from uafp_gui.cli import main
sys.exit(main(["acquire", "--simulate", "--out", sys.argv[1], "--leds", "5x5", "--exposure-ms", "60"]))
"""


@pytest.mark.slow  # end to end: kill -9 of a CLI subprocess: the slow lane
def test_kill_9_mid_acquisition_then_resume(tmp_path):
    out = tmp_path / "killed.tif"
    child = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(out)], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        present = 0
        while time.monotonic() < deadline and child.poll() is None:
            if out.exists():
                try:
                    present = len(read_tiff_frames(out)[0])
                except DatasetError:
                    present = 0
                if present >= 5:
                    break
            time.sleep(0.02)
        assert present >= 5, "the acquisition did not start in time"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(10)
    dataset = read_partial(out)
    planned = AcquisitionPlan(square_size=5).led_sequence(MicroscopeDescription.from_simulation(PRESETS["misaligned"]))
    k = dataset.frame_count
    assert 5 <= k < 25 and not dataset.complete and dataset.planned_frame_count == 25
    assert [f.leds[0] for f in dataset.meta.frames] == planned[:k]
    assert all(f.exposure_ms == 60.0 for f in dataset.meta.frames)
    assert dataset.meta.camera_offset == 100.0 and dataset.meta.bit_depth == 12
    before = dataset.frames.copy()

    from uafp_gui.cli import main

    assert main(["acquire", "--simulate", "--out", str(out), "--resume", "--sim-no-wait"]) == 0
    resumed = read_dataset(out)
    assert resumed.complete and resumed.frame_count == 25
    assert [f.leds[0] for f in resumed.meta.frames] == planned
    np.testing.assert_array_equal(resumed.frames[: before.shape[0]], before)
    # the resumed frames come from the same hidden microscope: bright field stays bright
    assert resumed.frames[k:].reshape(25 - k, -1).mean(axis=1).max() > 500
