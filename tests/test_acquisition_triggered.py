"""Hardware-triggered acquisition: the plan's LEDs loaded into the firmware's sequence, the camera
running one sequence acquisition, its exposure-end output stepping the array.

On the simulated microscope (camera strobe wired to the firmware model's trigger input, and for
the closed loop the model's trigger output to the camera's trigger input) and, when the AVR
toolchain is installed, with the real firmware in simavr stepped by the same camera.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from factories import ACQUISITION_MICROSCOPE, ACQUISITION_SIMULATION

from uafp_gui.acquisition.events import AcquisitionFinished, FrameAcquired
from uafp_gui.acquisition.mda_engine import FpEngine
from uafp_gui.acquisition.plan import AcquisitionPlan, MicroscopeDescription
from uafp_gui.acquisition.runner import Acquisition
from uafp_gui.acquisition.sequence import frame_events
from uafp_gui.errors import CameraTimeoutError, ConfigError, TriggerMismatchError
from uafp_gui.io.dataset import PartialDatasetWarning, read_dataset
from uafp_gui.simulated.microscope import open_simulated_microscope, simulated_camera

SETTINGS, MICROSCOPE = ACQUISITION_SIMULATION, ACQUISITION_MICROSCOPE
PLAN_5X5 = AcquisitionPlan(square_size=5, brightfield_exposure_ms=2.0)
WIRINGS = ("closed_loop", "strobe")


def read_partial(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PartialDatasetWarning)
        return read_dataset(path)


def open_microscope(wiring: str | None, realtime: bool = False):
    """A fresh simulated microscope (same noise seed every time); the camera in external-trigger
    mode for the closed loop, as the user's Micro-Manager configuration would set it."""
    core, leds = open_simulated_microscope(SETTINGS, realtime=realtime)
    if wiring == "closed_loop":
        core.setProperty("Camera", "TriggerMode", "External")
    return core, leds


def acquire(path: Path, plan: AcquisitionPlan, wiring: str | None, *, realtime: bool = False, **kwargs):
    core, leds = open_microscope(wiring, realtime)
    acquisition = Acquisition(
        core, leds, plan.replace(hardware_triggered=wiring is not None), path, MICROSCOPE,
        trigger_wiring=wiring or "closed_loop", **kwargs,
    )  # fmt: skip
    try:
        finished = acquisition.run_to_end()
        return finished, leds, core
    finally:
        leds.close()


@pytest.mark.parametrize("wiring", WIRINGS)
def test_hardware_triggered_5x5_equals_software_timed(tmp_path, wiring):
    software, _, _ = acquire(tmp_path / "software.tif", PLAN_5X5, None, realtime=True)
    triggered, leds, core = acquire(tmp_path / "triggered.tif", PLAN_5X5, wiring, realtime=True)
    assert software.reason == triggered.reason == "completed" and triggered.frames_written == 25
    reference, data = read_dataset(tmp_path / "software.tif"), read_dataset(tmp_path / "triggered.tif")
    assert data.complete
    # same LED and exposure per frame, and (same noise seed, same frame order) the same pixels
    assert data.meta.frames == reference.meta.frames
    assert [f.leds[0] for f in data.meta.frames] == PLAN_5X5.led_sequence(MICROSCOPE)
    np.testing.assert_array_equal(data.frames, reference.frames)
    assert data.meta.extra["hardware_trigger"]["wiring"] == wiring
    assert data.meta.extra["acquisition_plan"]["hardware_triggered"] is True
    # one sequence: every frame stepped the firmware once; it ends dark and disarmed at step N
    assert leds.model.sequence_position == 25 and not leds.model.sequence_armed and not leds.model.lit
    assert not core.isSequenceRunning()
    print(
        f"\nper-frame overhead beyond a 2 ms exposure, 64 px frames, simulated: software-timed "
        f"{software.per_frame_overhead_ms:.2f} ms, hardware-triggered ({wiring}) "
        f"{triggered.per_frame_overhead_ms:.2f} ms"
    )


def test_firmware_steps_once_per_camera_frame_without_serial_commands(tmp_path):
    core, leds = open_microscope("closed_loop")
    commands = []
    feed = leds.model.feed
    leds.model.feed = lambda data: (commands.append(bytes(data)), feed(data))[1]
    acquisition = Acquisition(core, leds, PLAN_5X5.replace(hardware_triggered=True), tmp_path / "run.tif", MICROSCOPE)
    seen = []
    for event in acquisition.run():
        if isinstance(event, FrameAcquired):
            seen.append(leds.model.sequence_position)
    leds.close()
    lines = b"".join(commands).decode().split()
    # loading, arming and checking the sequence: a handful of lines for 25 frames, no `l.` per frame
    assert not [line for line in lines if line.startswith("l.")]
    assert lines.count("tseq") == 1 and lines.count("qseq") == 1 and len(lines) < 15
    assert seen[-1] == 25


def test_dark_field_exposures_and_averaging_split_into_sequences(tmp_path):
    plan = PLAN_5X5.replace(darkfield_exposure_ms=6.0, frames_to_average=2, order="na")
    software, _, _ = acquire(tmp_path / "software.tif", plan, None)
    triggered, leds, _ = acquire(tmp_path / "triggered.tif", plan, "closed_loop")
    reference, data = read_dataset(tmp_path / "software.tif"), read_dataset(tmp_path / "triggered.tif")
    assert data.meta.frames == reference.meta.frames and len({f.exposure_ms for f in data.meta.frames}) == 2
    assert data.frames.dtype == np.float32
    np.testing.assert_array_equal(data.frames, reference.frames)
    # the last sequence holds the dark-field frames, each LED twice (two frames averaged)
    dark = sum(1 for f in data.meta.frames if f.exposure_ms == 6.0)
    assert leds.model.sequence_position == 2 * dark


def test_plans_longer_than_the_firmware_sequence_run_as_several(tmp_path):
    # 11 frames averaged per LED: 25 LEDs need 275 steps > 256, so two sequences (23 + 2 LEDs)
    plan = PLAN_5X5.replace(frames_to_average=11)
    finished, leds, _ = acquire(tmp_path / "run.tif", plan, "strobe")
    assert finished.frames_written == 25
    assert leds.model.sequence_position == 2 * 11  # the second sequence ran to its end
    data = read_dataset(tmp_path / "run.tif")
    assert [f.leds[0] for f in data.meta.frames] == plan.led_sequence(MICROSCOPE)
    assert data.meta.extra["hardware_trigger"]["sequence_max_frames"] == 23


@pytest.mark.parametrize("wiring", WIRINGS)
def test_cancel_mid_sequence_keeps_the_frames_and_resume_completes(tmp_path, wiring):
    core, leds = open_microscope(wiring, realtime=True)
    out = tmp_path / "run.tif"
    acquisition = Acquisition(
        core, leds, PLAN_5X5.replace(hardware_triggered=True), out, MICROSCOPE, trigger_wiring=wiring
    )
    events = []
    for event in acquisition.run():
        events.append(event)
        if isinstance(event, FrameAcquired) and event.index == 9:
            acquisition.cancel()
    finished = events[-1]
    assert isinstance(finished, AcquisitionFinished) and finished.reason == "cancelled"
    assert finished.frames_written == 10 and read_partial(out).frame_count == 10
    # the camera and the array stopped; the LEDs are dark
    assert not core.isSequenceRunning() and not leds.model.sequence_armed and not leds.model.lit
    resumed = Acquisition(core, leds, None, out, None, resume=True, trigger_wiring=wiring)
    indices = [e.index for e in resumed.run() if isinstance(e, FrameAcquired)]
    assert indices == list(range(10, 25)) and leds.model.sequence_position == 15
    leds.close()
    data = read_dataset(out)
    assert data.complete and [f.leds[0] for f in data.meta.frames] == PLAN_5X5.led_sequence(MICROSCOPE)


def test_missed_trigger_with_a_free_running_camera_names_the_suspect_frames(tmp_path):
    core, leds = open_microscope("strobe")
    simulated_camera(core).inject_missed_strobe(after_frames=7)  # frame 7's exposure end is lost
    out = tmp_path / "run.tif"
    acquisition = Acquisition(
        core, leds, PLAN_5X5.replace(hardware_triggered=True), out, MICROSCOPE, trigger_wiring="strobe"
    )
    with pytest.raises(TriggerMismatchError) as raised:
        acquisition.run_to_end()
    message = str(raised.value)
    assert "missed 1 trigger edge" in message and "step 24" in message and "frames 1-24 may show" in message
    assert "25 of 25 frames are saved" in message
    assert read_partial(out).frame_count == 25
    # what really happened: frames 8.. show the LED of the frame before them
    assert leds.model.sequence_position == 24 and acquisition.state == "failed"
    leds.close()


def test_missed_trigger_in_the_closed_loop_stalls_and_is_reported(tmp_path):
    core, leds = open_microscope("closed_loop")
    camera = simulated_camera(core)
    camera.inject_missed_strobe(after_frames=7)
    out = tmp_path / "run.tif"
    acquisition = Acquisition(
        core, leds, PLAN_5X5.replace(hardware_triggered=True), out, MICROSCOPE, camera_timeout_s=0.3
    )
    with pytest.raises(CameraTimeoutError) as raised:  # a hang would end in pytest-timeout
        acquisition.run_to_end()
    message = str(raised.value)
    assert "delivered 8 of 25 frames" in message and "step 7 of 25" in message
    assert "did not reach the array's trigger input (D2) after frame 7" in message
    assert "8 of 25 frames are saved" in message
    # the 8 frames saved are the right ones: the array never moved on without the camera
    data = read_partial(out)
    assert data.frame_count == 8
    assert not core.isSequenceRunning() and not leds.model.sequence_armed
    leds.close()


def test_the_engine_runs_hardware_sequences_under_pymmcore_plus_mda():
    core, leds = open_microscope("closed_loop")
    specs = PLAN_5X5.frame_specs(MICROSCOPE)[:6]
    frames = []
    core.mda.set_engine(FpEngine(core, hardware_triggered=True))
    core.mda.events.frameReady.connect(lambda image, event, meta: frames.append(event.metadata["uafp_frame"]))
    core.mda.run(frame_events(specs))
    assert frames == list(range(6)) and leds.model.sequence_position == 6
    leds.close()


def test_an_led_array_without_sequences_is_refused_before_anything_moves(tmp_path):
    from uafp_gui.devices.interfaces import LedArray
    from uafp_gui.devices.mm_led import led_array_of

    class PlainArray(LedArray):
        array_shape = SETTINGS.led_array_shape
        pitch_mm = SETTINGS.led_pitch_mm

        def _send_light(self, array_leds):
            pass

        def _send_clear(self):
            pass

        def _send_brightness(self, values):
            pass

        def _send_color(self, rgb):
            pass

        def close(self):
            pass

    core, _ = open_simulated_microscope(SETTINGS, PlainArray(), realtime=False)
    plan = PLAN_5X5.replace(hardware_triggered=True)
    acquisition = Acquisition(core, led_array_of(core), plan, tmp_path / "run.tif", MICROSCOPE)
    with pytest.raises(ConfigError, match="sequence mode"):
        acquisition.run_to_end()
    assert not (tmp_path / "run.tif").exists()


# ------------------------------------------------------------------------- real firmware


def test_real_firmware_in_simavr_steps_through_the_plan(tmp_path):
    """The uafp-led firmware in simavr as the LED array: the engine loads the sequence over the
    serial port, the simulated camera's exposure-end pulses go to pin D2, the firmware's D5 pulses
    trigger the camera, and each frame is rendered for the LEDs decoded from the data pin."""
    from firmware.harness import FirmwareVariant, SimulatedBoard, build_firmware, require_toolchain

    from uafp_gui.devices.illuminate import IlluminateLedArray

    require_toolchain()
    variant = FirmwareVariant()  # 16x16 serpentine WS2812B, 10 mm pitch
    board = SimulatedBoard(build_firmware(variant), variant, tmp_path / "ttyLED")
    settings = SETTINGS.replace(
        frame_size=32, led_array_shape=(16, 16), led_on_axis=(7.5, 7.5), led_pitch_mm=10.0,
        led_height_mm=120.0,
    )  # fmt: skip
    microscope = MicroscopeDescription.from_simulation(settings)
    try:
        leds = IlluminateLedArray(board.port, boot_timeout_s=10.0, timeout_s=5.0)
        core, _ = open_simulated_microscope(settings, leds, realtime=False)
        camera = simulated_camera(core)
        exposed = []

        def lit_on_the_data_pin():
            lit = [(i // 16, i % 16) for i, rgb in enumerate(board.frame()) if rgb != (0, 0, 0)]
            exposed.append(lit)
            return lit

        def d5_rising_edges():
            return sum(1 for level, _ in list(board.trigger_out_edges) if level == 1)

        camera.leds = lit_on_the_data_pin
        camera.wire_triggers(board.trigger_in, d5_rising_edges)
        core.setProperty("Camera", "TriggerMode", "External")
        plan = AcquisitionPlan(square_size=3, brightfield_exposure_ms=1.0, hardware_triggered=True)
        acquisition = Acquisition(core, leds, plan, tmp_path / "run.tif", microscope, camera_timeout_s=5.0)
        finished = acquisition.run_to_end()
        assert finished.reason == "completed" and finished.frames_written == 9
        order = plan.led_sequence(microscope)
        assert exposed[-9:] == [[led] for led in order]  # the data pin showed the sequence in order
        assert leds.sequence_status() == (9, 9, False)
        assert [i for i, rgb in enumerate(board.frame()) if rgb != (0, 0, 0)] == []
        assert len(board.trigger_pulses()) == 9  # tseq's pulse + one per step, none after the last
        leds.close()
    finally:
        board.stop()
