"""Saturation end to end: the simulated microscope's default exposure does not clip; acquisition
warns per frame and in its summary; auto exposure avoids clipping; the live view and thumbnails
show clipped pixels in colour; both engines leave clipped pixels out of the data term."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from uafp_gui.acquisition.events import AcquisitionFinished, FrameAcquired
from uafp_gui.acquisition.plan import AcquisitionPlan, MicroscopeDescription
from uafp_gui.acquisition.runner import Acquisition
from uafp_gui.gui.previews import SATURATED_RGB, frame_preview, frame_thumbnail
from uafp_gui.simulate import PRESETS
from uafp_gui.simulated.microscope import open_simulated_microscope

pytestmark = pytest.mark.usefixtures("single_thread")

DEFAULT = PRESETS["misaligned"]  # the simulated microscope the app and `uafp acquire --simulate` use
FULL_SCALE = 2**DEFAULT.bit_depth - 1


def acquire(tmp_path: Path, plan: AcquisitionPlan, settings=DEFAULT) -> list:
    core, leds = open_simulated_microscope(settings, realtime=False)
    try:
        return list(Acquisition(core, leds, plan, tmp_path / "run.tif",
                                MicroscopeDescription.from_simulation(settings)).run())
    finally:
        leds.close()


def test_the_simulated_microscopes_default_exposure_does_not_clip(tmp_path):
    """Every bright-field frame of the default 128 px camera at the default 10 ms stays below full scale."""
    events = acquire(tmp_path, AcquisitionPlan(square_size=5))  # the 5x5 centre holds the bright-field LEDs
    frames = [event for event in events if isinstance(event, FrameAcquired)]
    assert frames[0].frame.shape == (DEFAULT.frame_size, DEFAULT.frame_size) and frames[0].spec.exposure_ms == 10.0
    assert all(event.saturated_pixels == 0 for event in frames)
    peak = max(int(event.frame.max()) for event in frames)
    assert 0.5 * FULL_SCALE < peak < FULL_SCALE  # well exposed, not clipped
    assert events[-1].saturated_frames == () and events[-1].saturation_summary() == ""


def test_a_long_exposure_is_reported_per_frame_and_in_the_summary(tmp_path):
    events = acquire(tmp_path, AcquisitionPlan(square_size=3, brightfield_exposure_ms=40.0))
    frames = [event for event in events if isinstance(event, FrameAcquired)]
    finished = events[-1]
    assert isinstance(finished, AcquisitionFinished)
    clipped = [event.index for event in frames if event.saturated_pixels]
    assert clipped and finished.saturated_frames == tuple(clipped)
    worst = max(event.saturated_fraction for event in frames)
    assert finished.max_saturated_fraction == pytest.approx(worst)
    assert f"{len(clipped)} of 9 frames have saturated pixels" in finished.saturation_summary()


def test_the_cli_warns_per_frame_and_at_the_end(tmp_path, capsys):
    from uafp_gui.cli import main

    code = main(["acquire", "--simulate", "--sim-no-wait", "--out", str(tmp_path / "run.tif"), "--leds", "3x3",
                 "--exposure-ms", "40"])
    err = capsys.readouterr().err
    assert code == 0
    per_frame = [line for line in err.splitlines() if "warning: frame" in line and "saturated" in line]
    assert per_frame and all(line.startswith("uafp acquire: warning:") for line in per_frame)
    assert "frames have saturated pixels" in err.splitlines()[-1]


def test_auto_exposure_avoids_clipping_from_a_clipping_start(tmp_path):
    """Metering starts at 40 ms (which clips) and shortens until no metered pixel clips."""
    plan = AcquisitionPlan(square_size=3, brightfield_exposure_ms=40.0, auto_exposure=True)
    events = acquire(tmp_path, plan, replace(DEFAULT, frame_size=64))
    frames = [event for event in events if isinstance(event, FrameAcquired)]
    assert all(event.saturated_pixels == 0 for event in frames)
    assert max(event.spec.exposure_ms for event in frames) < 40.0


def test_thumbnails_and_live_previews_show_clipped_pixels_in_colour():
    frame = np.full((64, 64), 1000, np.uint16)
    frame[10:20, 30:40] = FULL_SCALE
    thumbnail = frame_thumbnail(frame, full_scale=FULL_SCALE)
    assert thumbnail.shape == (64, 64, 3)
    assert tuple(thumbnail[15, 35]) == SATURATED_RGB and thumbnail[0, 0, 0] == thumbnail[0, 0, 1]
    preview = frame_preview(frame, FULL_SCALE)
    assert preview.saturated == 100 and preview.overlay is not None
    assert tuple(preview.overlay[15, 35]) == (*SATURATED_RGB, 255) and preview.overlay[0, 0, 3] == 0
    assert frame_preview(np.full((8, 8), 10, np.uint16), FULL_SCALE).overlay is None


def test_live_view_draws_the_overlay_and_says_how_much(qtbot):
    pytest.importorskip("pytestqt")
    from uafp_gui.gui.live_view import LiveViewPanel

    panel = LiveViewPanel()
    qtbot.addWidget(panel)
    panel.set_bit_depth(DEFAULT.bit_depth)
    frame = np.full((64, 64), 1000, np.uint16)
    frame[:8] = FULL_SCALE
    panel.show_frame(frame, "frame 3")
    assert panel.saturation.isVisible()  # a graphics item: visible in its scene
    assert panel.saturation.image is not None and panel.saturation.image[0, 0, 0] == 255
    assert panel.saturated and "12.5 %" in panel.info.text()
    panel.show_frame(np.full((64, 64), 1000, np.uint16), "frame 4")
    assert not panel.saturation.isVisible() and not panel.saturated


@pytest.fixture(scope="module")
def twins():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_saturation

    return bench_saturation.twin_datasets(48, 5)


def test_the_twin_datasets_differ_only_by_clipping(twins):
    _, clear, clipped = twins
    full = 2**12 - 1
    assert not (clear.frames >= 2**16 - 1).any()
    assert (clipped.frames >= full).reshape(len(clipped.frames), -1).any(axis=1).sum() >= 5
    unclipped = clipped.frames < full
    np.testing.assert_array_equal(clear.frames[unclipped], clipped.frames[unclipped])


@pytest.mark.parametrize("method", ["uafp", "classic"])
@pytest.mark.slow  # numerical run: the slow lane
def test_clipped_pixels_are_left_out_of_the_data_term(twins, method):
    """The same electrons read by a clipping and a non-clipping camera. With the mask every clipped pixel
    is left out as a measurement (kept only as a lower bound), the misfit over the usable pixels is
    that of the clean data, and the image stays as good as the clean one's (refsim truth)."""
    from uafp_gui.metrics import score

    simulation, clear, clipped = twins
    clipped_count = int((clipped.frames >= 2**12 - 1).sum())
    if method == "uafp":
        from uafp_gui.recon.uafp import UafpReconstruction, UafpSettings

        def reconstruct(dataset, mask):
            recon = UafpReconstruction.from_dataset(
                dataset, UafpSettings(device="cpu", upsample=2, iterations=6, mask_saturated=mask))
            list(recon.run())
            result = recon.result()
            return result, recon.data_misfit(), result.extra["saturated_pixels_excluded"]
    else:
        from uafp_gui.recon.classic import ClassicSettings, ClassicSolver

        def reconstruct(dataset, mask):
            solver = ClassicSolver(dataset, ClassicSettings(upsample=2, iterations=4, device="cpu",
                                                            mask_saturated=mask))
            result = solver.run()
            return result, solver.data_misfit(), sum(int((~m).sum()) for m in solver.unsaturated.values())

    clean, clean_misfit, _ = reconstruct(clear, True)
    masked, masked_misfit, excluded = reconstruct(clipped, True)
    _, _, none_excluded = reconstruct(clipped, False)
    assert excluded == clipped_count > 0 and none_excluded == 0
    assert masked_misfit < 1.5 * clean_misfit

    def psnr(result):
        return score(simulation.truth, result.object_field.astype(complex)).amplitude_psnr_db

    assert psnr(masked) > psnr(clean) - 1.0
