"""`uafp simulate OUT.tif --preset ...`: render a synthetic dataset and its ground truth."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

from uafp_gui.cli.options import finite_float, whole_number
from uafp_gui.errors import ConfigError, DatasetError


def register(subparsers) -> None:
    from uafp_gui.simulate import PRESETS, SimulationSettings

    parser = subparsers.add_parser(
        "simulate",
        help="simulate an LED-array FP dataset of the built-in sample",
        description="Render the built-in sample through the forward model of an imperfect microscope. "
        "Writes OUT.tif (the dataset) and OUT_truth/ (ground-truth object, pupil, calibration). "
        "Every preset parameter can be overridden by its flag.",
    )
    parser.add_argument("out", type=Path, help="dataset to write, e.g. run.tif")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="ideal")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    for spec in _flat_fields(SimulationSettings):
        flag = "--" + spec.name.replace("_", "-")
        if spec.name == "zernike_rad":
            parser.add_argument(
                "--zernike",
                action="append",
                metavar="J=RAD",
                default=None,
                help="aberration coefficient, Noll index J in radians (repeatable), e.g. --zernike 4=1.5",
            )
        elif spec.type in ("tuple[int, int]",):
            parser.add_argument(flag, type=whole_number, nargs=2, default=None, metavar=("ROW", "COL"))
        elif spec.type in ("tuple[float, float]",):
            parser.add_argument(flag, type=finite_float, nargs=2, default=None, metavar=("ROW", "COL"))
        else:
            kind = {"int": whole_number, "float": finite_float}.get(str(spec.type), finite_float)
            parser.add_argument(flag, type=kind, default=None, help=f"override the preset's {spec.name}")
    parser.set_defaults(func=run)


def _flat_fields(settings_type) -> list:
    """The settings' fields as flags: the optics fields beside the others."""
    from uafp_gui.model import Optics

    return [*fields(Optics), *(spec for spec in fields(settings_type) if spec.name != "optics")]


def _parse_zernike(items: list[str]) -> dict[int, float]:
    coefficients = {}
    for item in items:
        try:
            j, value = item.split("=")
            coefficients[int(j)] = float(value)
        except ValueError:
            raise ConfigError(f"--zernike {item!r}: write it as J=RAD, e.g. --zernike 4=1.5") from None
        if not 2 <= int(j) <= 21:
            raise ConfigError(f"--zernike {item!r}: Noll index must be between 2 and 21")
    return coefficients


def run(args: argparse.Namespace) -> int:
    from uafp_gui.simulate import PRESETS

    settings = PRESETS[args.preset]
    changes: dict[str, object] = {}
    for spec in _flat_fields(type(settings)):
        if spec.name == "zernike_rad":
            if args.zernike:
                changes["zernike_rad"] = _parse_zernike(args.zernike)
            continue
        value = getattr(args, spec.name, None)
        if value is not None:
            changes[spec.name] = tuple(value) if isinstance(value, list) else value
    try:
        settings = settings.replace(**changes)
    except DatasetError as error:  # an optics value out of range: say which flag
        name = str(error).split(" ", 1)[0].split("[", 1)[0]
        raise ConfigError(f"--{name.replace('_', '-')}: {error}") from None
    settings.check_limits()  # sizes and the LED square, before anything is allocated (uafp_gui.limits)
    if not args.out.parent.is_dir():
        raise ConfigError(f"folder {args.out.parent} does not exist or is not a folder: create it first")
    if args.out.is_dir():
        raise ConfigError(f"{args.out} is a folder: give the dataset file to write, e.g. {args.out / 'run.tif'}")
    from uafp_gui.recon.common import resolve_device  # torch loads here, after the checks
    from uafp_gui.simulate import describe, simulate, write_simulation

    print(f"simulating {args.preset}: {describe(settings)}")
    simulation = simulate(settings, device=str(resolve_device(args.device)))
    truth = write_simulation(simulation, args.out)
    print(f"wrote {args.out} ({simulation.frames.shape[0]} frames) and ground truth {truth}/")
    clipped = (simulation.frames >= 2**settings.bit_depth - 1).reshape(len(simulation.frames), -1)
    if clipped.any():  # as the camera would: the reconstruction leaves those pixels out
        print(f"uafp simulate: warning: {int(clipped.any(axis=1).sum())} of {len(clipped)} frames have saturated "
              f"pixels (up to {100 * clipped.mean(axis=1).max():.1f} % of a frame) at {settings.photons_per_pixel:g} "
              f"photons/px and {settings.bit_depth} bits; lower --photons-per-pixel for unclipped data",
              file=sys.stderr)
    return 0
