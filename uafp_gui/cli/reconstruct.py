"""`uafp reconstruct DATASET`: UA-FP (default) or classic FP, writing the result folder."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np

from uafp_gui.cli.options import finite_float, whole_number
from uafp_gui.errors import ConfigError
from uafp_gui.recon.choices import Device, Loss

if TYPE_CHECKING:
    from uafp_gui.recon.common import ReconstructionResult

MIN_PARTIAL_FRACTION = 0.5  # a partial dataset below this share of its planned frames needs --allow-partial


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "reconstruct",
        help="reconstruct a dataset (UA-FP by default, or --method classic)",
        description="Reconstruct DATASET (a .tif written by uafp, or a plain TIFF stack with a sidecar "
        "JSON) and write the result folder: amplitude.tif, phase.tif, pupil.tif, calibration.json "
        "and report.png.",
    )
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--method", choices=["uafp", "classic"], default="uafp")
    parser.add_argument("--out", type=Path, default=None, help="result folder (default: DATASET_result/)")
    parser.add_argument("--upsample", type=whole_number, default=4, help="object pixels per camera pixel (default 4)")
    parser.add_argument("--iterations", type=whole_number, default=None, help="iterations (default: engine's own)")
    parser.add_argument("--device", default=Device.AUTO, help="auto (CUDA when present), cpu or cuda")
    parser.add_argument("--calibration", type=Path, default=None, help="start from a saved calibration.json")
    parser.add_argument(
        "--freeze-system",
        action="store_true",
        help="UA-FP: keep the system (geometry, pupil, gains) fixed; use with --calibration",
    )
    parser.add_argument("--no-report", action="store_true", help="do not write report.png")
    parser.add_argument(
        "--allow-partial",
        action="store_true",
        help=f"reconstruct an interrupted (partial) dataset even when it holds fewer than "
        f"{int(MIN_PARTIAL_FRACTION * 100)} %% of its planned frames",
    )
    uafp = parser.add_argument_group("UA-FP options (what to learn, how)")
    uafp.add_argument(
        "--loss",
        choices=list(Loss),
        default=Loss.AMPLITUDE,
        help="data term: amplitude least squares (default, robust) or Poisson likelihood",
    )
    uafp.add_argument("--tv-weight", type=finite_float, default=0.0, help="total-variation regularisation weight")
    uafp.add_argument("--batch-size", type=whole_number, default=None, help="frames per mini-batch")
    uafp.add_argument(
        "--pixel-integration",
        type=whole_number,
        default=None,
        help="sub-samples per camera pixel and axis in the model (1 = off; default 2)",
    )
    for name, text in [
        ("geometry", "LED shift, rotation and height"),
        ("zernike", "Zernike aberrations"),
        ("gains", "per-frame LED brightness"),
    ]:
        uafp.add_argument(f"--no-{name}", action="store_true", help=f"do not learn the {text}")
    for name, text in [
        ("freeform", "a free-form pupil phase inside the support"),
        ("led-residuals", "small per-LED position residuals"),
        ("background", "a background offset"),
    ]:
        uafp.add_argument(f"--learn-{name}", action="store_true", help=f"also learn {text}")
    from uafp_gui.cli import fullfield

    fullfield.add_arguments(parser)
    parser.set_defaults(func=run)


def uafp_settings(args: argparse.Namespace):
    from uafp_gui.recon.uafp import UafpSettings

    changes = {
        "upsample": args.upsample,
        "device": args.device,
        "freeze_system": args.freeze_system,
        "loss": args.loss,
        "tv_weight": args.tv_weight,
        "learn_geometry": not args.no_geometry,
        "learn_zernike": not args.no_zernike,
        "learn_gains": not args.no_gains,
        "learn_freeform": args.learn_freeform,
        "learn_led_residuals": args.learn_led_residuals,
        "learn_background": args.learn_background,
    }
    for name in ("iterations", "batch_size", "pixel_integration"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    return UafpSettings(**changes)


def check_partial(dataset, allowed: bool) -> None:
    """An interrupted acquisition reconstructs only when it holds a sensible share of its plan."""
    planned = dataset.planned_frame_count or dataset.frame_count
    if dataset.complete or allowed or dataset.frame_count >= MIN_PARTIAL_FRACTION * planned:
        return
    raise ConfigError(
        f"{dataset.path} is a partial dataset: {dataset.frame_count} of {planned} planned frames, fewer than "
        f"{int(MIN_PARTIAL_FRACTION * 100)} %: complete it with `uafp acquire --out {dataset.path} --resume`, "
        "or pass --allow-partial to reconstruct the frames there are"
    )


def check_output_folder(out: Path) -> None:
    """Fail before a long reconstruction, not after it, when the result folder cannot be written."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file: give a folder for the result")
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"cannot create result folder {out}: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot create result folder {out}: no write permission in {existing}")


def check_numbers(args: argparse.Namespace) -> None:
    """The numeric options' ranges, checked before torch loads (a typo fails in well under a second)."""
    if args.upsample < 1:
        raise ConfigError(f"--upsample {args.upsample}: give 1 or more object pixels per camera pixel")
    for name in ("iterations", "batch_size", "pixel_integration"):
        value = getattr(args, name)
        smallest = 0 if name == "iterations" else 1
        if value is not None and value < smallest:
            raise ConfigError(f"--{name.replace('_', '-')} {value}: must be {smallest} or more")
    if args.tv_weight < 0:
        raise ConfigError(f"--tv-weight {args.tv_weight}: tv_weight must be 0 or more")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so a reconstruction ends the same way (last good state saved)."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated("terminated (SIGTERM)")


@dataclass
class RunEnding:
    result: object  # the ReconstructionResult written (None when there was nothing to write)
    exit_code: int | None  # None: the run ended normally, the caller prints the summary


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """Within: SIGTERM raises `Terminated` (main thread only; elsewhere signals cannot be caught)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _signals_held():
    """While the last good state is written, Ctrl-C and SIGTERM wait (a second Ctrl-C must not lose it)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _save(recon, result, out: Path, dataset, report: bool) -> None:
    from uafp_gui.recon.common import save_result

    save_result(result, out, report=report, report_dataset=dataset)  # the whole folder, atomically


def run_keeping_the_last_good_state(recon, out: Path, dataset, report: bool = True) -> RunEnding:
    """Run UA-FP with a progress bar; whatever ends it, write the last good state to `out`.

    A run that completes returns its result (exit_code None: the caller saves and reports). Ctrl-C
    or SIGTERM write the last good state as a partial result and give exit code 130 / 143; a
    diverged run or an engine failure writes it and raises a `ReconstructionError` that says it is
    the engine's fault and what to try.
    """
    import sys

    from uafp_gui.cli.progress import PhaseProgress
    from uafp_gui.errors import ReconstructionError

    def write_partial() -> object:
        if recon.object is None:
            return None
        with _signals_held():
            result = recon.result()
            _save(recon, result, out, dataset, report)
        return result

    try:
        with _sigterm_as_interrupt(), PhaseProgress(recon.settings.iterations) as progress:
            recon.on_phase = progress.on_phase  # the start fit and search: a bar each, before the iterations
            for update in recon.run():
                progress.iteration(update)
    except KeyboardInterrupt as interrupt:
        how = "SIGTERM" if isinstance(interrupt, Terminated) else "Ctrl-C"
        recon.interrupted(f"interrupted by {how}")
        result = write_partial()
        where = (
            f"the last good state (iteration {recon.iteration}) is written to {out}/ as a partial result"
            if result is not None
            else "it had not started iterating: nothing to write"
        )
        print(f"uafp reconstruct: {how}: stopped; {where}", file=sys.stderr)
        return RunEnding(result, 143 if how == "SIGTERM" else 130)
    except ReconstructionError as error:
        result = write_partial() if recon.failed else None
        if result is not None:
            raise ReconstructionError(f"{error}; it is written to {out}/ as a partial result") from None
        raise
    if recon.failed:  # diverged or failed in every roll-back: the engine's fault, the state is kept
        write_partial()
        raise ReconstructionError(f"{recon.failure_message()}; it is written to {out}/ as a partial result")
    result = recon.result()
    _save(recon, result, out, dataset, report)
    return RunEnding(result, None)


def calibration_summary(result, meta) -> list[str]:
    """The calibration as printed after a reconstruction: `value +- std` where error bars exist."""
    from uafp_gui.physics.zernike import defocus_um_from_z4
    from uafp_gui.recon.uncertainty import calibration_lines

    lines = calibration_lines(result.geometry, result.zernike_rad, result.extra)
    z4 = result.zernike_rad.get(4, 0.0)
    defocus_um = defocus_um_from_z4(z4, meta.wavelength_um, meta.objective_na)
    # + 0.0: never print "-0.000" (classic FP fits no Zernike)
    defocus = f"{z4 + 0.0:+.3f} rad = {round(defocus_um, 1) + 0.0:+.1f} um"
    lines[0] = f"calibration: {lines[0]}; Zernike 4 (defocus) {defocus}"
    return lines


def run(args: argparse.Namespace) -> int:
    # Arguments, paths and files first (numpy and tifffile only); torch loads once they are good.
    from uafp_gui.cli import fullfield
    from uafp_gui.io.calibration import load_calibration
    from uafp_gui.io.dataset import read_dataset

    check_numbers(args)
    tiled = fullfield.wanted(args)
    if tiled:
        fullfield.check_options(args)
    out = args.out or args.dataset.with_name(args.dataset.stem + "_result")
    check_output_folder(out)
    if tiled:
        return fullfield.run(args, out)
    dataset = read_dataset(args.dataset)
    check_partial(dataset, args.allow_partial)
    calibration = load_calibration(args.calibration) if args.calibration else None
    count, height, width = dataset.frames.shape
    if sys.stderr.isatty():  # at once, before torch loads and the model is built (seconds): a first sign of life
        print(f"uafp reconstruct: {args.dataset.name}: {count} frames of {height}x{width}, {args.method}; loading the "
              "engine (progress bars with ETA follow; Ctrl-C stops and keeps the last good state)", file=sys.stderr,
              flush=True)

    from uafp_gui.cli.progress import progress_bar
    from uafp_gui.recon.common import save_result

    if args.method == "classic":
        from uafp_gui.recon.classic import ClassicSettings, ClassicSolver

        settings = ClassicSettings(upsample=args.upsample, device=args.device)
        if args.iterations is not None:
            settings = ClassicSettings(upsample=args.upsample, device=args.device, iterations=args.iterations)
        solver = ClassicSolver(dataset, settings, calibration)
        with progress_bar(settings.iterations, "classic FP", "iter") as bar:
            result = solver.run(
                lambda update: (bar.update(1), bar.set_postfix(misfit=f"{update.loss:.4f}", refresh=False))
            )
    else:
        from uafp_gui.recon.uafp import UafpReconstruction

        recon = UafpReconstruction.from_dataset(dataset, uafp_settings(args), calibration)
        ending = run_keeping_the_last_good_state(recon, out, dataset, report=not args.no_report)
        result = cast("ReconstructionResult", ending.result)
        if ending.exit_code is not None:
            return ending.exit_code
    if args.method == "classic":
        save_result(result, out, report=not args.no_report, report_dataset=dataset)
    print(
        f"{args.method}: {result.iterations} iterations in {result.elapsed_s:.1f} s, "
        f"data misfit {result.extra.get('data_misfit', float('nan')):.4g}"
    )
    history = [float(v) for v in result.loss_history]
    if args.method == "classic" and history and min(history) < 0.9 * history[-1]:
        best = int(np.argmin(history)) + 1
        print(f"classic: the misfit was lowest at iteration {best} ({min(history):.4g}); EPRY drifts after that "
              f"(--iterations {best} stops there)")
    for line in calibration_summary(result, dataset.meta):
        print(line)
    if result.extra.get("at_bounds"):
        print(
            f"warning: {', '.join(result.extra['at_bounds'])} reached the edge of the physical range the engine "
            "allows: the engine could not pin it down from these data, do not trust that value"
        )
    search = result.extra.get("start_search")
    if search:
        print(
            f"start: the bright-field pupil circles scatter {search['circle_residual_px']:.2f} px about a rigid LED "
            f"grid, so the start geometry was searched with {search['evaluations']} short reconstructions "
            f"({search['seconds']:.0f} s): probe misfit {search['probe_loss_from']:.4g} -> "
            f"{search['probe_loss_to']:.4g}"
        )
    print(f"wrote {out}/")
    return 0
