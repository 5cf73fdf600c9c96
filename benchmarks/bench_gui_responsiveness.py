"""GUI responsiveness during a simulated acquisition with live UA-FP reconstruction.

Drives the main window through the same slots its buttons call (simulated microscope, real-time
camera), and prints:
- UI event-loop stall (max, p99): a 5 ms timer's lateness while acquisition + reconstruction run,
  for the whole run, while frames arrive, and for the reconstruction's last iterations alone;
- frame -> display lag: from a frame's arrival (publisher thread) to the first *drawn*
  reconstruction update that used it (median, max).

    python benchmarks/bench_gui_responsiveness.py                  # offscreen
    xvfb-run -s "-screen 0 1600x1000x24" python benchmarks/bench_gui_responsiveness.py --x11
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frame-size", type=int, default=64)
    parser.add_argument("--leds", type=int, default=9, help="square LED set size (default 9: 81 frames)")
    parser.add_argument("--upsample", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=20, help="iterations after the acquisition")
    parser.add_argument("--exposure-ms", type=float, default=10.0)
    parser.add_argument("--x11", action="store_true", help="use the real display (default: offscreen)")
    args = parser.parse_args()
    if not args.x11:
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

    import numpy as np
    from gui_probe import DrawProbe, EventLoopMonitor
    from PySide6.QtCore import QSettings
    from PySide6.QtWidgets import QApplication

    from uafp_gui.gui.main_window import MainWindow
    from uafp_gui.simulate import PRESETS

    app = QApplication.instance() or QApplication(sys.argv[:1])
    work = Path(tempfile.mkdtemp(prefix="uafp-bench-gui-"))
    settings = QSettings(str(work / "settings.ini"), QSettings.Format.IniFormat)
    simulation = replace(PRESETS["misaligned"], frame_size=args.frame_size)
    window = MainWindow(settings, simulation=simulation, probe_hardware=False)
    probe = DrawProbe(window)  # counts the redraws and the frame -> display lag, from outside the app
    window.show()

    def wait(condition, timeout_s: float) -> bool:
        end = time.monotonic() + timeout_s
        while not condition() and time.monotonic() < end:
            app.processEvents()
            time.sleep(0.001)
        return bool(condition())

    if not wait(lambda: window.connected, 30):
        print("could not connect the simulated microscope", file=sys.stderr)
        return 1
    panel = window.acquisition_panel
    panel.square_size.setValue(args.leds)
    panel.exposure.setValue(args.exposure_ms)
    panel.output.setText(str(work / "run.tif"))
    window.recon_panel.upsample.setValue(args.upsample)
    window.recon_panel.iterations.setValue(args.iterations)
    monitor = EventLoopMonitor(interval_ms=5)  # the whole run
    acquiring = EventLoopMonitor(interval_ms=5)  # while frames arrive (acquisition + live reconstruction)
    monitor.start()
    acquiring.start()
    started = time.perf_counter()
    window.start_acquisition()
    wait(lambda: window.acq_worker is not None and window.acq_worker.isFinished(), 600)
    acquiring.stop()
    after = EventLoopMonitor(interval_ms=5)  # the reconstruction's last iterations alone
    after.start()
    acquired = time.perf_counter() - started
    wait(lambda: window.recon_worker is not None and window.recon_worker.isFinished(), 900)
    total = time.perf_counter() - started
    monitor.stop()
    after.stop()
    worst, p99 = monitor.stall_ms()
    lags = probe.frame_lag_s()
    frames = args.leds**2
    print(f"simulated microscope: {frames} frames of {args.frame_size} px, {args.exposure_ms:g} ms exposures, "
          f"upsample {args.upsample}, {args.iterations} iterations after the acquisition, "
          f"{os.cpu_count()} CPU cores, platform {app.platformName()}")
    print(f"acquisition {acquired:.1f} s, acquisition + reconstruction {total:.1f} s, "
          f"{probe.updates_drawn} reconstruction redraws ({probe.updates_drawn / total:.1f} per s)")
    print(f"UI event-loop stall: max {worst:.0f} ms, p99 {p99:.0f} ms over {len(monitor.gaps_ms)} timer ticks")
    for label, part in (("while acquiring", acquiring), ("reconstruction only", after)):
        part_worst, part_p99 = part.stall_ms()
        print(f"  {label}: max {part_worst:.0f} ms, p99 {part_p99:.0f} ms over {len(part.gaps_ms)} ticks")
    if lags.size:
        print(f"frame -> displayed reconstruction lag: median {np.median(lags):.2f} s, max {lags.max():.2f} s, "
              f"({lags.size} frames)")
    window.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
