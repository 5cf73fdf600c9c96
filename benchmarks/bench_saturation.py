"""Saturated frames: how much clipped pixels cost, with and without leaving them out of the data term.

    python benchmarks/bench_saturation.py [--frame 96] [--leds 9] [--iterations 40]

The same microscope is simulated twice with the independent reference simulator (refsim): once
with a 16-bit camera (nothing clips) and once with a 12-bit camera at the same light level, so the
brightest bright-field pixels clip at 4095. Both engines (UA-FP and classic FP) reconstruct each
dataset; the saturated one twice, with the clipped pixels masked out of the likelihood (the
default) and without (clipped values taken as data). Scores: amplitude PSNR against the truth
band-limited to the synthetic aperture (`uafp_gui.metrics.score`).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import refsim  # noqa: E402


def twin_datasets(frame: int, leds: int, clip_percentile: float = 95.0, seed: int = 3):
    """(simulation, unsaturated dataset, saturated dataset) from one refsim run: the same electrons
    read out by a 16-bit camera (nothing clips) and by a 12-bit one whose full scale sits at the
    `clip_percentile` of the brightest frame (refsim itself scales its camera gain so nothing clips;
    here the light is set so the 12-bit camera does)."""
    from dataclasses import replace as replace_fields

    from uafp_gui.io.dataset import Dataset

    micro = replace(refsim.RefMicroscope(), frame_size=frame, led_grid=leds, led_brightness_spread=0.0,
                    read_noise_e=2.0, bit_depth=16, seed=seed)
    simulation = refsim.simulate(micro)
    expected = np.asarray(simulation.expected_counts, dtype=np.float64)
    offset = micro.camera_offset
    full_12 = 2**12 - 1
    brightest = expected[np.argmax(expected.reshape(len(expected), -1).mean(axis=1))]
    scale = (full_12 - offset) / np.percentile(brightest, clip_percentile)
    rng = np.random.default_rng(seed + 100)
    raw = offset + rng.poisson(expected * scale) + micro.read_noise_e * rng.standard_normal(expected.shape)
    raw = np.rint(raw)
    clear = Dataset(meta=replace_fields(simulation.meta, bit_depth=16),
                    frames=np.clip(raw, 0, 2**16 - 1).astype(np.uint16))
    clipped = Dataset(meta=replace_fields(simulation.meta, bit_depth=12),
                      frames=np.clip(raw, 0, full_12).astype(np.uint16))
    return simulation, clear, clipped


def clipped_share(dataset) -> tuple[int, float]:
    full = 2**dataset.meta.bit_depth - 1
    clipped = (dataset.frames >= full).reshape(len(dataset.frames), -1)
    return int(clipped.any(axis=1).sum()), float(clipped.mean(axis=1).max())


def reconstruct(simulation, dataset, method: str, mask: bool, iterations: int, upsample: int) -> float:
    """Amplitude PSNR (dB) of one reconstruction against the band-limited truth."""
    import torch

    from uafp_gui.metrics import score

    torch.set_num_threads(1)
    if method == "uafp":
        from uafp_gui.recon.uafp import UafpReconstruction, UafpSettings

        settings = UafpSettings(device="cpu", upsample=upsample, iterations=iterations, mask_saturated=mask)
        recon = UafpReconstruction.from_dataset(dataset, settings)
        for _ in recon.run():
            pass
        result = recon.result()
    else:
        from uafp_gui.recon.classic import ClassicSettings, ClassicSolver

        result = ClassicSolver(dataset, ClassicSettings(upsample=upsample, device="cpu", mask_saturated=mask)).run()
    return float(score(simulation.truth, result.object_field.astype(complex)).amplitude_psnr_db)


def run(frame: int, leds: int, iterations: int, upsample: int, methods=("uafp", "classic")) -> dict:
    simulation, clear, clipped = twin_datasets(frame, leds)
    figures: dict = {"clipped_frames": clipped_share(clipped), "clear_frames": clipped_share(clear),
                     "frames": len(clipped.frames)}
    for method in methods:
        figures[method] = {
            "unsaturated": reconstruct(simulation, clear, method, True, iterations, upsample),
            "saturated, masked": reconstruct(simulation, clipped, method, True, iterations, upsample),
            "saturated, unmasked": reconstruct(simulation, clipped, method, False, iterations, upsample),
        }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frame", type=int, default=96)
    parser.add_argument("--leds", type=int, default=9)
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--upsample", type=int, default=4)
    args = parser.parse_args()
    figures = run(args.frame, args.leds, args.iterations, args.upsample)
    frames, share = figures["clipped_frames"]
    print(f"refsim, {args.frame} px frames, {args.leds}x{args.leds} LEDs ({figures['frames']} frames); 12-bit camera: "
          f"{frames} frames clipped (up to {100 * share:.1f} % of a frame); 16-bit: {figures['clear_frames'][0]}")
    for method in ("uafp", "classic"):
        row = figures[method]
        print(f"{method:8s} amplitude PSNR: unsaturated {row['unsaturated']:.2f} dB, saturated with mask "
              f"{row['saturated, masked']:.2f} dB, without mask {row['saturated, unmasked']:.2f} dB")


if __name__ == "__main__":
    main()
