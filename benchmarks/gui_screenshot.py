"""Screenshots of the desktop app for the README, taken as a new user would see it.

Starts `uafp-gui`'s window with fresh settings (no hardware: the simulated microscope), then
drives it through the same slots its buttons call: a square LED plan, Start (acquisition with
live UA-FP), waits for the reconstruction to converge, exports the result. Saves
`docs/gui_mid_reconstruction.png` (during the reconstruction) and `docs/gui_converged.png`
(at the end: converged image, pupil, LED map with estimated displacements).

    xvfb-run -s "-screen 0 1600x1000x24" python benchmarks/gui_screenshot.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def save(window, path: Path, width: int) -> None:
    from PySide6.QtCore import Qt

    pixmap = window.grab()
    if pixmap.width() > width:
        pixmap = pixmap.scaledToWidth(width, Qt.TransformationMode.SmoothTransformation)
    pixmap.save(str(path), "PNG", 9)
    from PIL import Image  # a 256-colour palette keeps the committed PNG small

    Image.open(path).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    print(f"{path}: {pixmap.width()}x{pixmap.height()}, {path.stat().st_size // 1024} KB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--leds", type=int, default=11)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--width", type=int, default=1400, help="screenshot width in pixels")
    parser.add_argument("--out", type=Path, default=DOCS)
    args = parser.parse_args()

    from PySide6.QtWidgets import QApplication

    from uafp_gui.gui.app import build_parser, create_window

    app = QApplication.instance() or QApplication(sys.argv[:1])
    work = Path(tempfile.mkdtemp(prefix="uafp-first-run-"))
    window = create_window(build_parser().parse_args(["--settings", str(work / "settings.ini")]))
    window.resize(1600, 980)
    window.show()

    def wait(condition, timeout_s: float) -> bool:
        end = time.monotonic() + timeout_s
        while not condition() and time.monotonic() < end:
            app.processEvents()
            time.sleep(0.005)
        return bool(condition())

    if not wait(lambda: window.connected, 60):
        print("no connection to the simulated microscope", file=sys.stderr)
        return 1
    print("status bar:", window.statusBar().currentMessage())
    panel = window.acquisition_panel
    panel.square_size.setValue(args.leds)
    panel.output.setText(str(work / "first_run.tif"))
    window.recon_panel.iterations.setValue(args.iterations)
    window.start_acquisition()
    args.out.mkdir(parents=True, exist_ok=True)
    wait(lambda: window.recon_job is not None and window.recon_job.recon is not None
         and window.recon_job.recon.iteration >= 6 and window.acq_worker.isFinished(), 600)
    wait(lambda: False, 0.6)  # two redraws
    save(window, args.out / "gui_mid_reconstruction.png", args.width)
    wait(lambda: window.reconstruction_settled, 900)  # its end handled: status and views final
    wait(lambda: False, 0.6)
    window.docks["export"].raise_()
    window.export_panel.folder.setText(str(work / "first_run_result"))
    window.export_result(work / "first_run_result")
    wait(lambda: window.last_export is not None, 120)
    wait(lambda: False, 0.5)
    save(window, args.out / "gui_converged.png", args.width)
    print("exported:", sorted(p.name for p in window.last_export.iterdir()))
    print("reconstruction:", window.recon_panel.status.text())
    window.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
