"""Benchmark UA-FP: seconds per iteration, time to converge, and the FFT floor of this device.

Simulates a preset (default `misaligned`: 225 frames, 128 px -> 512 px), runs UA-FP from the
nominal geometry while scoring the object against the ground truth after every iteration
(scoring time excluded), and prints:
  - seconds per iteration (median),
  - time and iteration at which amplitude PSNR first comes within 0.5 dB of its final value,
  - the ratio of one iteration to the time of the FFTs it must do (forward + backward of every
    frame, per phase), measured on the same device: the physical floor.

    python benchmarks/bench_reconstruct.py [--preset misaligned] [--frame-size 128] [--device auto]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

# isort: off
import uafp_gui  # noqa: F401  (first: it sets OMP_WAIT_POLICY before torch loads OpenMP)

# isort: on
import numpy as np
import torch

from uafp_gui.metrics import lowpass, score
from uafp_gui.recon.common import resolve_device
from uafp_gui.recon.uafp import UafpReconstruction, UafpSettings
from uafp_gui.simulate import PRESETS, simulate


def fft_floor_s(frames: int, frame_size: int, pixel_integration: int, object_size: int, device) -> float:
    """Time of the FFTs one image+system iteration needs: per phase, every frame forward and back."""
    size = frame_size * pixel_integration
    batch = torch.randn(frames, size, size, dtype=torch.complex64, device=device)
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
    return 2 * (time.perf_counter() - started) / repeats  # two phases per iteration


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="misaligned", choices=sorted(PRESETS))
    parser.add_argument("--frame-size", type=int, default=128)
    parser.add_argument("--iterations", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    device = resolve_device(args.device)
    settings = replace(PRESETS[args.preset], frame_size=args.frame_size, seed=args.seed)
    simulation = simulate(settings, device=str(device))
    from uafp_gui.io.dataset import Dataset

    dataset = Dataset(meta=simulation.meta, frames=simulation.frames)
    recon_settings = UafpSettings(device=str(device), upsample=settings.upsample)
    if args.iterations:
        recon_settings = recon_settings.replace(iterations=args.iterations)
    recon = UafpReconstruction.from_dataset(dataset, recon_settings)
    cutoff = simulation.calibration_truth["synthetic_aperture_na"] / settings.wavelength_um
    pixel_um = settings.camera_pixel_um / settings.magnification / settings.upsample
    truth = lowpass(simulation.object_truth, pixel_um, cutoff)
    times, psnrs = [], []
    last = time.perf_counter()
    compute = 0.0
    for update in recon.run():
        if device.type == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        times.append(now - last)
        compute += now - last
        obj = recon.object.detach().cpu().numpy()
        psnrs.append(score(truth, obj.astype(complex)).amplitude_psnr_db)
        print(f"iteration {update.iteration:3d}  {compute:6.1f} s  loss {update.loss:.3e}  PSNR {psnrs[-1]:.2f} dB")
        last = time.perf_counter()
    final = psnrs[-1]
    reached = next(i for i, p in enumerate(psnrs) if p >= final - 0.5)
    elapsed = np.cumsum(times)
    per_iteration = float(np.median(times[2:])) if len(times) > 3 else float(np.median(times))
    floor = fft_floor_s(
        simulation.frames.shape[0],
        args.frame_size,
        recon_settings.pixel_integration,
        args.frame_size * settings.upsample,
        device,
    )
    g = recon.model.system.led_geometry()
    print()
    print(
        f"device: {device} ({torch.get_num_threads()} CPU threads)"
        if device.type == "cpu"
        else f"device: {torch.cuda.get_device_name()}"
    )
    print(
        f"case: {args.preset}, {simulation.frames.shape[0]} frames, {args.frame_size} px -> "
        f"{args.frame_size * settings.upsample} px"
    )
    print(f"seconds per iteration (median): {per_iteration:.3f}")
    print(f"final amplitude PSNR: {final:.2f} dB after {len(psnrs)} iterations, {elapsed[-1]:.1f} s")
    print(f"within 0.5 dB of final: iteration {reached + 1}, {elapsed[reached]:.1f} s")
    print(f"FFT floor per iteration: {floor:.3f} s; iteration / floor = {per_iteration / floor:.1f}x")
    print(
        f"geometry: shift ({g.shift_x_mm:+.3f}, {g.shift_y_mm:+.3f}) mm, rotation {g.rotation_deg:+.3f} deg, "
        f"height {g.height_mm:.2f} mm (truth {simulation.settings.true_geometry})"
    )


if __name__ == "__main__":
    main()
