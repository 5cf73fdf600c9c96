"""Time quitting the desktop app in each phase: idle, live view, acquiring, start search, reconstructing.

Closing the window asks every job to stop, waits at most `QUIT_WAIT_S` for them, then detaches a
job still ending (it is never destroyed while running, and can no longer emit into the closing
window). Reported per phase: how long `close()` took (what the user waits for), and how long the
job took to really end after the request (the engine's own cancellation latency).

    xvfb-run -a python benchmarks/bench_gui_quit.py        # or QT_QPA_PLATFORM=offscreen
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def wait_until(app, condition, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("phase not reached")
        app.processEvents()
        time.sleep(0.01)


def main() -> int:
    from gui_probe import DrawProbe
    from PySide6.QtCore import QSettings
    from PySide6.QtWidgets import QApplication

    from uafp_gui.acquisition.plan import AcquisitionPlan, MicroscopeDescription
    from uafp_gui.acquisition.runner import Acquisition
    from uafp_gui.gui import workers
    from uafp_gui.gui.main_window import QUIT_WAIT_S, MainWindow
    from uafp_gui.simulate import PRESETS
    from uafp_gui.simulated.microscope import open_simulated_microscope

    app = QApplication.instance() or QApplication([])
    simulation = replace(PRESETS["misaligned"], frame_size=64)
    folder = Path(tempfile.mkdtemp(prefix="uafp_quit_"))
    dataset = folder / "run.tif"
    core, led_array = open_simulated_microscope(simulation, realtime=False)
    try:
        Acquisition(core, led_array, AcquisitionPlan(square_size=7), dataset,
                    MicroscopeDescription.from_simulation(simulation)).run_to_end()
    finally:
        led_array.close()

    probes: dict[int, DrawProbe] = {}

    def window() -> MainWindow:
        settings = QSettings(str(folder / "gui.ini"), QSettings.Format.IniFormat)
        w = MainWindow(settings, simulation=simulation, probe_hardware=False)
        probes[id(w)] = DrawProbe(w)
        w.show()
        wait_until(app, lambda: w.connected)
        return w

    def start_recon(w: MainWindow, search: bool) -> None:
        w.open_path(dataset)
        wait_until(app, lambda: w.dataset is not None)
        w.recon_panel.upsample.setValue(2)
        w.recon_panel.iterations.setValue(100000)
        if search:  # force the start search, and make it long
            original = w.recon_panel.settings
            w.recon_panel.settings = lambda: original().replace(start_search_residual_px=0.0,
                                                               start_search_evaluations=400)
        w.recon_panel.start_button.click()

    phases = {}

    def idle(w):
        return None

    def live(w):
        w.set_live(True)
        wait_until(app, lambda: w.live_worker is not None and w.live_worker.latest()[0] is not None)
        return w.live_worker

    def acquiring(w):
        w.acquisition_panel.square_size.setValue(15)
        w.acquisition_panel.output.setText(str(folder / f"acq_{time.monotonic_ns()}.tif"))
        w.acquisition_panel.exposure.setValue(20.0)
        w.recon_panel.upsample.setValue(4)
        w.acquisition_panel.start_button.click()
        wait_until(app, lambda: w.acquisition_panel.progress.value() >= 5)
        return w.acq_worker

    def start_search(w):
        start_recon(w, search=True)
        wait_until(app, lambda: w.recon_job is not None and w.recon_job.recon is not None
                   and w.recon_job.recon.circle_fit is not None)
        time.sleep(1.0)  # inside the search's probe reconstructions
        assert probes[id(w)].updates_drawn == 0, "the start search ended before the quit"
        return w.recon_worker

    def reconstructing(w):
        start_recon(w, search=False)
        wait_until(app, lambda: probes[id(w)].updates_drawn >= 2)
        return w.recon_worker

    for name, enter in (("idle", idle), ("live", live), ("acquiring", acquiring),
                        ("start search", start_search), ("reconstructing", reconstructing)):
        w = window()
        job = enter(w)
        started = time.perf_counter()
        w.close()
        closed_s = time.perf_counter() - started
        ended_s = None
        if job is not None:
            job.wait(120000)
            ended_s = time.perf_counter() - started
        w.deleteLater()
        app.processEvents()
        phases[name] = (closed_s, ended_s, job is not None and job in workers._DETACHED)
        ended = "-" if ended_s is None else f"{ended_s:.2f} s"
        print(f"{name:15s} close() {closed_s:.3f} s   job ended {ended}   detached: {phases[name][2]}")
    workers.wait_for_detached(60.0)
    worst = max(closed for closed, _, _ in phases.values())
    print(f"quit wait bound {QUIT_WAIT_S} s; slowest close() {worst:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
