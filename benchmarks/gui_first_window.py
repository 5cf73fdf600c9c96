"""The app's first window as a new user sees it, grabbed from the screen (the X server's pixels).

    xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/gui_first_window.py first_window.png

Starts the app the way `uafp-gui` does (display check, splash, window), waits until the simulated
microscope is connected and the reconstruction engine has loaded, then saves a screenshot of the
whole screen. Exit 0 when the window appeared; the display check's one line and exit 2 otherwise.
`.ci/run` runs it (through tests/test_first_run.py) under Xvfb.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="PNG to write")
    parser.add_argument("--settings", type=Path, default=None, help="settings file (default: a fresh one)")
    parser.add_argument("--timeout-s", type=float, default=180.0)
    args = parser.parse_args()

    from uafp_gui.gui import app as gui_app
    from uafp_gui.gui.display_check import display_problem

    problem = display_problem()
    if problem is not None:
        print(f"uafp-gui: error: {problem}", file=sys.stderr)
        return 2
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication(sys.argv[:1])
    splash = gui_app.show_splash()
    settings = args.settings or Path(args.out).with_suffix(".ini")
    window = gui_app.create_window(gui_app.build_parser().parse_args(["--no-probe", "--settings", str(settings)]))
    window.show()
    splash.finish(window)
    end = time.monotonic() + args.timeout_s
    while not (window.connected and window.engine_ready) and time.monotonic() < end:
        app.processEvents()
        time.sleep(0.01)
    if not (window.connected and window.engine_ready):
        print("the simulated microscope did not connect or the engine did not load in time", file=sys.stderr)
        return 1
    for _ in range(20):  # a few redraws after the last change
        app.processEvents()
        time.sleep(0.02)
    pixmap = app.primaryScreen().grabWindow(0)
    pixmap.save(str(args.out), "PNG")
    print(f"{args.out}: {pixmap.width()}x{pixmap.height()}; status bar: {window.statusBar().currentMessage()}")
    window.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
