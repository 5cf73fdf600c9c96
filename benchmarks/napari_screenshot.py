"""Screenshot of the napari plugin for the README: a dataset and a result opened with the uafp
reader (physical scale, scale bar in micrometres) and the reconstruction dock widget after a run.

Simulates a small acquisition of the misaligned microscope, opens it in napari, reconstructs it
with the dock widget (the app's UA-FP engine on a worker thread), opens the written result folder
too, and saves `docs/napari_plugin.png`. Needs napari (`pip install "uafp_gui[napari]"`) and a
display with OpenGL:

    xvfb-run -a -s "-screen 0 1400x900x24" env QT_QPA_PLATFORM=xcb python benchmarks/napari_screenshot.py
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"
MANIFEST = Path(__file__).resolve().parents[1] / "uafp_gui" / "napari.yaml"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--leds", type=int, default=9)
    parser.add_argument("--frame-size", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--width", type=int, default=1200, help="screenshot width in pixels")
    parser.add_argument("--out", type=Path, default=DOCS / "napari_plugin.png")
    args = parser.parse_args()

    import napari
    import npe2
    from qtpy.QtWidgets import QApplication

    from uafp_gui.gui.napari_widget import ReconstructWidget
    from uafp_gui.io.writer import write_dataset
    from uafp_gui.recon.common import save_result
    from uafp_gui.simulate import PRESETS, simulate

    manager = npe2.PluginManager.instance()
    if "uafp_gui" not in manager:
        manager.register(npe2.PluginManifest.from_file(MANIFEST))
    work = Path(tempfile.mkdtemp(prefix="uafp_napari_"))
    settings = replace(PRESETS["misaligned"], led_grid=args.leds, frame_size=args.frame_size)
    sim = simulate(settings)
    dataset = write_dataset(work / "run.tif", sim.meta, sim.frames)

    from napari.settings import get_settings

    get_settings().application.gui_notification_level = "none"  # no toasts over the screenshot
    # the (hidden) pupil layers are in cycles/um, the images in um: napari logs that once per layer
    logging.getLogger("napari").setLevel(logging.ERROR)
    viewer = napari.Viewer(title="uafp in napari", show=True)
    viewer.window.resize(1400, 860)
    viewer.open(str(dataset), plugin="uafp_gui")
    widget = ReconstructWidget(viewer)
    viewer.window.add_dock_widget(widget, name="FP reconstruction (UA-FP)", area="right")
    widget.iterations.setValue(args.iterations)
    widget.upsample.setValue(4)
    widget.run_button.click()
    started = time.perf_counter()
    while widget.state == "running":
        QApplication.processEvents()
        time.sleep(0.02)
    print(f"reconstruction: {widget.state} in {time.perf_counter() - started:.0f} s ({widget.status.text()})")
    if widget.last_result is None:
        return 1
    result_folder = save_result(widget.last_result, work / "run_result")
    for name in ("uafp amplitude", "uafp phase (rad)"):  # the widget's own layers: the folder shows the same
        viewer.layers[name].visible = False
    opened = viewer.open(str(result_folder), plugin="uafp_gui")
    scales = [f"{layer.name} (scale {tuple(float(v) for v in layer.scale)})" for layer in opened]
    print("result layers:", ", ".join(scales))
    for layer in opened[2:]:  # the pupil (cycles/um): in the file and the reader, not in this picture
        viewer.layers.remove(layer)
    viewer.layers["run"].visible = True
    viewer.grid.enabled = True
    viewer.grid.shape = (1, 3)
    viewer.scale_bar.visible = True
    viewer.scale_bar.unit = "um"
    viewer.dims.set_current_step(0, 0)  # frame 0: the on-axis, bright-field frame
    viewer.layers.selection.active = viewer.layers["run_result amplitude"]
    viewer.reset_view()
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.05)
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.close()
    QApplication.processEvents()
    image = viewer.screenshot(canvas_only=False, flash=False)
    from PIL import Image

    picture = Image.fromarray(image).convert("RGB")
    if picture.width > args.width:
        picture = picture.resize((args.width, round(picture.height * args.width / picture.width)), Image.LANCZOS)
    picture.quantize(256, method=Image.Quantize.MEDIANCUT).save(args.out, optimize=True)
    layers = ", ".join(f"{layer.name} (scale {tuple(round(s, 4) for s in layer.scale)})" for layer in viewer.layers)
    print(f"{args.out}: {picture.width}x{picture.height}, {args.out.stat().st_size // 1024} KB; layers: {layers}")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
