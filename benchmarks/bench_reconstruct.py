"""Benchmark UA-FP's speed on reference-simulator data, against its FFT floor and a plain EPRY.

Every case is simulated by the independent reference simulator (`benchmarks/refsim.py`, not the
engine's forward model), then reconstructed twice in the same process, on the same device:

- UA-FP with its defaults from the nominal geometry, the object scored against the ground truth
  after every iteration (scoring time excluded from every figure);
- plain EPRY (`uafp_gui.recon.classic`, its defaults), the baseline of the issue.

Printed per case: the UA-FP wall time of the whole call (start fit and search included) and its
split (start, iterations with their Gauss-Newton geometry steps, polish, error bars), seconds per
iteration (median over the iterations at the full illumination NA), the ratio
of one iteration to the FFTs it must do (every frame forward and back per phase at the
pixel-integration size, plus the object's FFT, measured in the same process: the floor; a ratio
is comparable between runs, a time is not on a shared CPU), the time and iteration at which the
amplitude PSNR comes within 0.5 dB of its final value, how the run stopped, and EPRY's wall time
and PSNR on the same data.

Cases: `misaligned` (the misaligned preset, 225 frames, 128 px -> 512 px) and `wide` (the same
microscope errors, 8 x 8 LEDs = 64 frames of 260 px -> 1040 px).

    python benchmarks/bench_reconstruct.py [--case misaligned wide] [--device auto] [--iterations N]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

# isort: off
import uafp_gui  # noqa: F401  (first: it sets OMP_WAIT_POLICY before torch loads OpenMP)

# isort: on
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import refsim  # noqa: E402

from uafp_gui.metrics import score  # noqa: E402
from uafp_gui.recon.classic import ClassicSettings, ClassicSolver  # noqa: E402
from uafp_gui.recon.common import resolve_device  # noqa: E402
from uafp_gui.recon.start import PHASE_START_GEOMETRY, PHASE_START_SEARCH  # noqa: E402
from uafp_gui.recon.uafp import PHASE_ERROR_BARS, PHASE_POLISH, UafpReconstruction, UafpSettings  # noqa: E402

CASES = {
    "misaligned": (refsim.MISALIGNED, 4),
    "wide": (replace(refsim.MISALIGNED, frame_size=260, led_grid=8), 4),
}


def fft_floor_s(frames: int, frame_size: int, pixel_integration: int, object_size: int, device) -> float:
    """Time of the FFTs one image+system iteration needs: per phase, every frame forward and back."""
    size = frame_size * pixel_integration
    batch = torch.randn(min(frames, 45), size, size, dtype=torch.complex64, device=device)
    big = torch.randn(object_size, object_size, dtype=torch.complex64, device=device)
    for _ in range(2):
        torch.fft.ifft2(batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    repeats = 3
    for _ in range(repeats):
        torch.fft.fft2(torch.fft.ifft2(batch))  # forward model + its adjoint in the backward pass
        torch.fft.ifft2(torch.fft.fft2(big))
    if device.type == "cuda":
        torch.cuda.synchronize()
    per_batch = (time.perf_counter() - started) / repeats
    # Frames in batches of at most 45 (the engine's default), two phases per iteration.
    return 2 * per_batch * frames / len(batch)


def run_uafp(dataset, truth, settings: UafpSettings, device) -> dict:
    recon = UafpReconstruction.from_dataset(dataset, settings)
    phases: dict[str, list[float]] = {}  # phase -> perf_counter of its first and last report (`on_phase`)
    recon.on_phase = lambda phase, done, total: phases.setdefault(phase, []).append(time.perf_counter())
    newton = [0.0]  # seconds in the in-run Gauss-Newton geometry steps
    step = recon.geometry_newton_step

    def timed_step() -> int:
        began = time.perf_counter()
        try:
            return step()
        finally:
            newton[0] += time.perf_counter() - began

    recon.geometry_newton_step = timed_step
    times, psnrs, scoring = [], [], 0.0
    began = last = time.perf_counter()

    def start_end() -> float:
        return max((phases[p][-1] for p in (PHASE_START_GEOMETRY, PHASE_START_SEARCH) if p in phases), default=began)

    for update in recon.run():
        if device.type == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        times.append(now - max(last, start_end()))
        obj = recon.object.detach()[recon.model.setup.object_window()].cpu().numpy()  # the frame's field of view
        psnrs.append(score(truth, obj.astype(complex)).amplitude_psnr_db)
        print(f"  iteration {update.iteration:3d}  {now - began - scoring:6.1f} s  loss {update.loss:.3e}  "
              f"PSNR {psnrs[-1]:.2f} dB", flush=True)
        last = time.perf_counter()
        scoring += last - now
    ended = time.perf_counter()
    result = recon.result()  # the engine's end of run counts: it is part of the call (error bars when not done in it)
    wall = time.perf_counter() - began - scoring
    result_s = time.perf_counter() - ended
    # The last update comes after the polish and the error bars (the run's last phases, see `on_phase`).
    polish_s = error_bars_s = 0.0
    if PHASE_POLISH in phases:
        polish_s = phases.get(PHASE_ERROR_BARS, [ended])[0] - phases[PHASE_POLISH][0]
    if PHASE_ERROR_BARS in phases:
        error_bars_s = phases[PHASE_ERROR_BARS][-1] - phases[PHASE_ERROR_BARS][0]
    if times:  # the last iteration's own time, without its polish and error bars
        times[-1] -= polish_s + error_bars_s
    final = psnrs[-1]
    reached = next(i for i, p in enumerate(psnrs) if p >= final - 0.5)
    full_na = times[len(times) // 2 :] if len(times) >= 4 else times
    return {
        "wall_s": wall,
        "start_s": start_end() - began,
        "result_s": result_s,
        "polish_s": polish_s,
        "error_bars_s": error_bars_s,
        "newton_s": newton[0],
        "iterations": len(psnrs),
        "stop_reason": result.extra.get("stop_reason"),
        "per_iteration_s": float(np.median(full_na)),
        "psnr_db": final,
        "psnr_final_from_result": score(truth, result.object_field.astype(complex)).amplitude_psnr_db,
        "reached_iteration": reached + 1,
        "reached_s": (start_end() - began) + float(np.sum(times[: reached + 1])),
        "geometry": recon.model.system.led_geometry(),
    }


def run_classic(dataset, truth, upsample: int, device) -> dict:
    began = time.perf_counter()
    result = ClassicSolver(dataset, ClassicSettings(upsample=upsample, device=str(device))).run()
    wall = time.perf_counter() - began
    return {"wall_s": wall, "psnr_db": score(truth, result.object_field.astype(complex)).amplitude_psnr_db}


def bench_case(name: str, device, iterations: int | None, seed: int) -> None:
    micro, upsample = CASES[name]
    micro = replace(micro, seed=seed)
    started = time.perf_counter()
    simulation = refsim.simulate(micro)
    frames = len(simulation.frames)
    size = micro.frame_size
    print(f"\n== case {name}: {frames} frames, {size} px -> {size * upsample} px "
          f"(reference simulator, {time.perf_counter() - started:.0f} s to simulate)", flush=True)
    dataset, truth = simulation.dataset(), simulation.truth
    settings = UafpSettings(device=str(device), upsample=upsample)
    if iterations:
        settings = settings.replace(iterations=iterations)
    floor_before = fft_floor_s(frames, size, settings.pixel_integration, size * upsample, device)
    uafp = run_uafp(dataset, truth, settings, device)
    floor_after = fft_floor_s(frames, size, settings.pixel_integration, size * upsample, device)
    classic = run_classic(dataset, truth, upsample, device)
    floor = 0.5 * (floor_before + floor_after)
    g = uafp["geometry"]
    print(f"-- {name}: {frames} x {size} px -> {size * upsample} px on {describe(device)}")
    iterating = uafp["wall_s"] - uafp["start_s"] - uafp["result_s"] - uafp["polish_s"] - uafp["error_bars_s"]
    print(f"UA-FP wall time (whole call): {uafp['wall_s']:.1f} s = start fit/search {uafp['start_s']:.1f} s "
          f"+ {uafp['iterations']} iterations {iterating:.1f} s (stop: {uafp['stop_reason']}; of which Gauss-Newton "
          f"geometry steps {uafp['newton_s']:.1f} s) + polish {uafp['polish_s']:.1f} s + error bars "
          f"{uafp['error_bars_s']:.1f} s + result {uafp['result_s']:.1f} s")
    print(f"seconds per iteration (median, full NA): {uafp['per_iteration_s']:.3f}")
    print(f"FFT floor per iteration: {floor:.3f} s (before {floor_before:.3f}, after {floor_after:.3f}); "
          f"iteration / floor = {uafp['per_iteration_s'] / floor:.2f}x")
    print(f"UA-FP amplitude PSNR: {uafp['psnr_db']:.2f} dB; within 0.5 dB of it at iteration "
          f"{uafp['reached_iteration']}, {uafp['reached_s']:.1f} s")
    print(f"EPRY (classic, defaults): {classic['wall_s']:.1f} s, amplitude PSNR {classic['psnr_db']:.2f} dB")
    print(f"UA-FP / EPRY wall time = {uafp['wall_s'] / classic['wall_s']:.2f}x at "
          f"{uafp['psnr_db'] - classic['psnr_db']:+.2f} dB")
    truth_geometry = micro.true_geometry_dict()
    print(f"geometry: shift ({g.shift_x_mm:+.3f}, {g.shift_y_mm:+.3f}) mm, rotation {g.rotation_deg:+.3f} deg, "
          f"height {g.height_mm:.2f} mm (truth {truth_geometry})", flush=True)


def describe(device) -> str:
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return torch.cuda.get_device_name(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", nargs="+", default=["misaligned", "wide"], choices=sorted(CASES))
    parser.add_argument("--iterations", type=int, default=None, help="UA-FP iteration cap (default: its own)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    device = resolve_device(args.device)
    for name in args.case:
        bench_case(name, device, args.iterations, args.seed)


if __name__ == "__main__":
    main()
