"""The napari plugin in a real (headless) napari viewer, with napari's own test fixture
`make_napari_viewer`: the reader through npe2, and the reconstruction dock widget (progress, cancel).

napari draws with OpenGL, which Qt's offscreen platform (the suite's default) does not offer: these
tests need a display, e.g. `xvfb-run -a env QT_QPA_PLATFORM=xcb python -m pytest tests/test_napari_plugin.py`
(.ci/run does this after the main suite). Skipped when napari is not installed
(`pip install "uafp_gui[napari]"`) or there is no display."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

napari = pytest.importorskip("napari")
npe2 = pytest.importorskip("npe2")
if os.environ.get("QT_QPA_PLATFORM", "") in ("offscreen", "minimal") or not (
    os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
):
    pytest.skip(
        "napari needs OpenGL, i.e. a display: run under xvfb-run with QT_QPA_PLATFORM=xcb", allow_module_level=True
    )

from uafp_gui.gui.napari_widget import AMPLITUDE_LAYER, PHASE_LAYER, ReconstructWidget  # noqa: E402
from uafp_gui.io.writer import write_dataset  # noqa: E402
from uafp_gui.simulate import PRESETS, simulate  # noqa: E402

MANIFEST = Path(__file__).resolve().parents[1] / "uafp_gui" / "napari.yaml"
SETTINGS = replace(PRESETS["ideal"], led_grid=5, frame_size=32, upsample=2)


@pytest.fixture(scope="module")
def dataset_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("napari") / "sim.tif"
    sim = simulate(SETTINGS)
    return write_dataset(path, sim.meta, sim.frames)


@pytest.fixture
def viewer(make_napari_viewer):
    manager = npe2.PluginManager.instance()
    if "uafp_gui" not in manager:  # not pip-installed from this tree: register the manifest itself
        manager.register(npe2.PluginManifest.from_file(MANIFEST))
    return make_napari_viewer()


def test_napari_opens_a_dataset_and_a_result_at_their_physical_scale(viewer, dataset_path, tmp_path):
    from uafp_gui.io.calibration import Calibration
    from uafp_gui.io.result import write_result
    from uafp_gui.model import LedGeometry

    [stack] = viewer.open(str(dataset_path), plugin="uafp_gui")
    pixel = SETTINGS.camera_pixel_um / SETTINGS.magnification
    assert stack.data.shape == (25, 32, 32)
    assert tuple(stack.scale) == pytest.approx((1.0, pixel, pixel))
    assert stack.metadata["uafp_leds"][0] == "16,16"
    rng = np.random.default_rng(1)
    folder = write_result(
        tmp_path / "r",
        rng.random((64, 64)),
        rng.uniform(-3, 3, (64, 64)),
        np.ones((32, 32)),
        np.zeros((32, 32)),
        Calibration(led_geometry=LedGeometry(height_mm=90.0), object_pixel_um=pixel / 2),
    )
    layers = viewer.open(str(folder), plugin="uafp_gui")
    names = ["r amplitude", "r phase (rad)", "r pupil amplitude", "r pupil phase (rad)"]
    assert [layer.name for layer in layers] == names
    assert tuple(layers[0].scale) == pytest.approx((pixel / 2, pixel / 2))
    assert layers[1].colormap.name == "twilight_shifted"
    assert str(layers[0].units[0]) == "micrometer"
    # the stack (frames) and the object overlay in micrometres: same field of view
    assert stack.extent.world[1][1:] == pytest.approx(layers[0].extent.world[1], rel=0.05)


def test_dock_widget_reconstructs_the_open_dataset(viewer, dataset_path, qtbot):
    viewer.open(str(dataset_path), plugin="uafp_gui")
    widget = ReconstructWidget(viewer)
    viewer.window.add_dock_widget(widget)
    assert widget.layer_box.currentText() == "sim"
    widget.iterations.setValue(3)
    widget.upsample.setValue(2)
    widget.run_button.click()
    qtbot.waitUntil(lambda: widget.state != "running", timeout=120_000)
    assert widget.state == "finished", widget.status.text()
    assert widget.progress.value() == 3
    result = widget.last_result
    assert result is not None and result.iterations == 3
    amplitude = viewer.layers[AMPLITUDE_LAYER]
    assert amplitude.data.shape == (64, 64)
    assert tuple(amplitude.scale) == pytest.approx((result.object_pixel_um, result.object_pixel_um))
    assert PHASE_LAYER in viewer.layers


def test_dock_widget_cancel_stops_between_iterations(viewer, dataset_path, qtbot):
    viewer.open(str(dataset_path), plugin="uafp_gui")
    widget = ReconstructWidget(viewer)
    widget.iterations.setValue(500)
    widget.upsample.setValue(2)
    widget.run_button.click()
    qtbot.waitUntil(lambda: widget.last_update is not None, timeout=120_000)
    widget.cancel_button.click()
    qtbot.waitUntil(lambda: widget.state != "running", timeout=60_000)
    assert widget.state == "cancelled"
    assert widget.last_update.iteration < 500 and widget.last_result is None
    assert "Cancelled after" in widget.status.text()
    assert widget.run_button.isEnabled()
