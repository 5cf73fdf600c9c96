"""Start-up times: how long until the desktop app shows something, and until a CLI error prints.

    python benchmarks/bench_startup.py [--runs 5] [--no-cold]

Each figure is the median of `--runs` fresh processes, timed from just before the process is
started: the splash on screen, the main window's first paint, the reconstruction engine loaded
(torch, off the UI thread), and `uafp reconstruct MISSING.tif` / `uafp reconstruct` (usage) exiting
with their one-line error. "cold" drops the page cache before each run (root on Linux only), so
Python, Qt, pyqtgraph and torch come from disk; "warm" runs right after one another.
The GUI runs on QT_QPA_PLATFORM=offscreen unless DISPLAY is set (e.g. under xvfb-run).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Runs in the child: records when the splash and the window first paint, and when the engine is loaded.
DRIVER = r"""
import sys, time
t0 = float(sys.argv[1])
from uafp_gui.gui import app
from PySide6.QtCore import QEvent, QObject, QTimer
from PySide6.QtWidgets import QApplication

marks = {}

class FirstPaint(QObject):
    def __init__(self, name):
        super().__init__()
        self.name = name
    def eventFilter(self, obj, event):
        if event.type() == QEvent.Type.Paint and self.name not in marks:
            marks[self.name] = time.time() - t0
        return False

show_splash = app.show_splash
def splash():
    s = show_splash()
    marks.setdefault("splash", time.time() - t0)  # show_splash paints before it returns
    return s
app.show_splash = splash

create_window = app.create_window
def window(args):
    w = create_window(args)
    w._first_paint = FirstPaint("window")
    w.installEventFilter(w._first_paint)
    def poll():
        if w.engine_ready and "window" in marks:
            marks["engine"] = time.time() - t0
            print(" ".join(f"{k}={v:.3f}" for k, v in marks.items()), flush=True)
            QApplication.instance().quit()
        else:
            QTimer.singleShot(10, poll)
    QTimer.singleShot(0, poll)
    return w
app.create_window = window
sys.exit(app.main(["--no-probe", "--settings", sys.argv[2]]))
"""


def drop_caches() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def gui_run(settings: Path) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if not env.get("DISPLAY"):
        env["QT_QPA_PLATFORM"] = "offscreen"
    started = time.time()
    out = subprocess.run([sys.executable, "-c", DRIVER, repr(started), str(settings)], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    line = [text for text in out.stdout.splitlines() if "window=" in text]
    if not line:
        raise RuntimeError(f"the app did not start: {out.stderr[-2000:]}")
    return {key: float(value) for key, value in (item.split("=") for item in line[-1].split())}


def cli_run(*args: str) -> float:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "uafp_gui", *args], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    elapsed = time.perf_counter() - started
    if out.returncode != 2:
        raise RuntimeError(f"uafp {' '.join(args)} exited {out.returncode}: {out.stderr[-500:]}")
    return elapsed


def measure(runs: int, cold: bool) -> dict[str, float]:
    samples: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        settings = Path(folder) / "bench.ini"
        for _ in range(runs):
            if cold:
                drop_caches()
            for key, value in gui_run(settings).items():
                samples.setdefault(key, []).append(value)
            for key, args in (("cli_missing_file", ("reconstruct", "missing.tif")),
                              ("cli_usage", ("reconstruct",))):
                if cold:
                    drop_caches()
                samples.setdefault(key, []).append(cli_run(*args))
    return {key: statistics.median(values) for key, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-cold", action="store_true", help="skip the cold runs")
    args = parser.parse_args()
    modes = [("warm", False)]
    if not args.no_cold:
        if drop_caches():
            modes.insert(0, ("cold", True))
        else:
            print("cold runs skipped: cannot drop the page cache (needs root on Linux)")
    gui_run(Path(tempfile.gettempdir()) / "uafp_bench_startup_first.ini")  # compile caches, settings file
    print(f"median of {args.runs} runs, seconds from process start ({os.cpu_count()} CPUs, load "
          f"{os.getloadavg()[0]:.1f})")
    for name, cold in modes:
        figures = measure(args.runs, cold)
        print(f"{name}: splash {figures['splash']:.2f}, window painted {figures['window']:.2f}, engine loaded "
              f"{figures['engine']:.2f}; CLI missing-file error {figures['cli_missing_file']:.2f}, usage error "
              f"{figures['cli_usage']:.2f}")


if __name__ == "__main__":
    main()
