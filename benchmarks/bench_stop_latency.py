"""How soon a UA-FP run ends after Stop, in every phase that can take more than a second.

For each phase (the start-geometry fit, the start search, the iterations, the Gauss-Newton polish, the
error bars) a fresh run of the same simulated dataset is stopped during that phase (0.3 s after its
first progress report past 0, so mid-step; for the iterations, 0.5 s after the first update), and the
seconds from the Stop to the end of `run()` are printed, with how the run ended (`cancelled`, the last
good state kept). The process's first torch optimiser is built before (it imports torch._dynamo, a
one-off cost of seconds that a Stop during the very first start fit would otherwise pay).

    python benchmarks/bench_stop_latency.py [--frame-size 64] [--leds 7] [--device auto]
"""

from __future__ import annotations

import argparse
import threading
import time
from dataclasses import replace

# isort: off
import uafp_gui  # noqa: F401  (first: it sets OMP_WAIT_POLICY before torch loads OpenMP)

# isort: on
from uafp_gui.recon.start import PHASE_START_GEOMETRY, PHASE_START_SEARCH
from uafp_gui.recon.uafp import PHASE_ERROR_BARS, PHASE_POLISH, UafpReconstruction, UafpSettings
from uafp_gui.simulate import PRESETS, simulate

ITERATING = "iterations"


class _Dataset:
    def __init__(self, simulation):
        self.meta, self.frames, self.path = simulation.meta, simulation.frames, None


def stop_during(dataset, settings: UafpSettings, phase: str) -> tuple[float, str, int]:
    """(seconds from Stop to the end of the run, stop reason, iterations made)."""
    recon = UafpReconstruction.from_dataset(dataset, settings)
    cancel = threading.Event()
    stopped_at = [0.0]
    timers: list[threading.Timer] = []

    def stop() -> None:
        if not cancel.is_set():
            stopped_at[0] = time.perf_counter()
            cancel.set()

    def on_phase(name: str, done: int, total: int) -> None:
        if name == phase and done >= 1 and not timers:
            timers.append(threading.Timer(0.3, stop))
            timers[0].start()

    recon.on_phase = on_phase
    for _ in recon.run(cancel=cancel):
        if phase == ITERATING and not timers:
            timers.append(threading.Timer(0.5, stop))
            timers[0].start()
    ended = time.perf_counter()
    if not cancel.is_set():
        return float("nan"), str(recon.stop_reason), recon.iteration
    return ended - stopped_at[0], str(recon.stop_reason), recon.iteration


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frame-size", type=int, default=64)
    parser.add_argument("--leds", type=int, default=7)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    import torch

    began = time.perf_counter()
    torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])
    print(f"the process's first torch optimiser: {time.perf_counter() - began:.1f} s (imports torch._dynamo)")
    preset = replace(PRESETS["misaligned"], frame_size=args.frame_size, led_grid=args.leds, upsample=2)
    dataset = _Dataset(simulate(preset))
    # the start search forced (residual threshold 0), a short schedule that ends with polish and error bars
    settings = UafpSettings(upsample=2, iterations=6, device=args.device, start_search_residual_px=0.0,
                            start_search_evaluations=8, convergence_window=0)
    print(f"{len(dataset.frames)} frames of {args.frame_size} px; Stop during each phase:")
    for phase in (PHASE_START_GEOMETRY, PHASE_START_SEARCH, ITERATING, PHASE_POLISH, PHASE_ERROR_BARS):
        latency, reason, iterations = stop_during(dataset, settings, phase)
        print(f"  {phase:32s} ended {latency:5.2f} s after Stop ({reason}, {iterations} iterations kept)", flush=True)


if __name__ == "__main__":
    main()
