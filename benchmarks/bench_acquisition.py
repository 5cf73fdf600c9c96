"""Acquisition benchmark on the simulated microscope (real-time exposures).

Prints the per-frame overhead beyond the exposure (target < 5 ms): the time between
consecutive frames minus the exposure, which covers the LED command through the core and the
serial driver, the snap hand-off, the frame hand-off to the writer and subscribers and the
runner's own bookkeeping. The same run hardware-triggered (the LED list in the firmware's
sequence, each camera exposure-end pulse stepping it; closed loop and free-running strobe
wiring) shows what is left without a serial command per frame. With `--reconstruct` (default
on when the UA-FP engine is present) it then runs the same acquisition with UA-FP
reconstructing live and prints how far the reconstruction trailed the newest frame.

    python benchmarks/bench_acquisition.py [--leds 15x15] [--exposure-ms 10] [--no-reconstruct]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def run_once(
    leds: str, exposure_ms: float, folder: Path, live_device: str | None, wiring: str | None = None,
    final_iterations: int = 0,
):
    from uafp_gui.acquisition.events import AcquisitionStarted, FrameAcquired
    from uafp_gui.acquisition.plan import AcquisitionPlan, MicroscopeDescription, parse_led_set
    from uafp_gui.acquisition.runner import Acquisition
    from uafp_gui.session.acquisition import AcquisitionSession
    from uafp_gui.simulated.camera import default_simulation_settings
    from uafp_gui.simulated.microscope import open_simulated_microscope

    settings = default_simulation_settings()
    core, led_array = open_simulated_microscope(settings, realtime=True)
    if wiring == "closed_loop":
        core.setProperty("Camera", "TriggerMode", "External")  # fed by the array's trigger output
    plan = AcquisitionPlan(
        **parse_led_set(leds), brightfield_exposure_ms=exposure_ms, hardware_triggered=wiring is not None
    )
    microscope = MicroscopeDescription.from_simulation(settings)
    out = folder / ("live.tif" if live_device else f"run-{wiring or 'software'}.tif")
    acquisition = Acquisition(core, led_array, plan, out, microscope, trigger_wiring=wiring or "closed_loop")
    live = None
    if live_device:
        from uafp_gui.recon.uafp import UafpSettings
        from uafp_gui.session.reconstruction import LiveReconstruction

        live = LiveReconstruction(UafpSettings(device=live_device))
    session = AcquisitionSession(acquisition, live)
    if live is not None:
        live.start_thread(final_iterations)
    stamps = []
    finished = None
    for event in session.events():
        if isinstance(event, AcquisitionStarted):
            pass
        elif isinstance(event, FrameAcquired):
            stamps.append(time.perf_counter())
        else:
            finished = event
    led_array.close()
    intervals_ms = np.diff(stamps) * 1000
    return intervals_ms - exposure_ms, finished, live


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--leds", default="15x15")
    parser.add_argument("--exposure-ms", type=float, default=10.0)
    parser.add_argument("--no-reconstruct", action="store_true")
    parser.add_argument("--device", default="auto", help="UA-FP device for the live reconstruction")
    parser.add_argument("--final-iterations", type=int, default=0, help="UA-FP iterations after the run")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        overhead, finished, _ = run_once(args.leds, args.exposure_ms, folder, None)
        print(f"simulated acquisition, {args.leds} LEDs, {args.exposure_ms:g} ms exposure, 128 x 128 frames:")
        print(
            f"  per-frame overhead beyond exposure: median {np.median(overhead):.2f} ms, "
            f"p95 {np.percentile(overhead, 95):.2f} ms, max {overhead.max():.2f} ms "
            f"(run average {finished.per_frame_overhead_ms:.2f} ms; target < 5 ms)"
        )
        print(f"  {finished.frames_written} frames in {finished.elapsed_s:.2f} s including warm-up")
        for wiring in ("closed_loop", "strobe"):
            overhead, finished, _ = run_once(args.leds, args.exposure_ms, folder, None, wiring)
            print(f"hardware-triggered ({wiring}): no serial command per frame")
            print(
                f"  per-frame overhead beyond exposure: median {np.median(overhead):.2f} ms, "
                f"p95 {np.percentile(overhead, 95):.2f} ms, max {overhead.max():.2f} ms "
                f"(run average {finished.per_frame_overhead_ms:.2f} ms)"
            )

        try:
            import uafp_gui.recon.uafp  # noqa: F401
        except ImportError:
            print("live reconstruction: UA-FP engine not available, skipped")
            return
        if args.no_reconstruct:
            return
        overhead, finished, live = run_once(
            args.leds, args.exposure_ms, folder, args.device, final_iterations=args.final_iterations
        )
        print("with UA-FP reconstructing live:")
        print(
            f"  per-frame overhead beyond exposure: median {np.median(overhead):.2f} ms, "
            f"p95 {np.percentile(overhead, 95):.2f} ms, max {overhead.max():.2f} ms"
        )
        report = live.lag_report()
        started = time.perf_counter()
        live.finish()
        print("  " + report.describe())
        if args.final_iterations:
            print(f"  {args.final_iterations} final iterations took {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
