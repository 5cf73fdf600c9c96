"""`uafp export RESULT --format ome-zarr|ome-tiff|imagej`: a result's object for other tools."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a result folder as OME-Zarr, OME-TIFF or an ImageJ hyperstack",
        description="Export the reconstructed object of RESULT (a result folder) as one 2-channel image "
        "(amplitude, phase in radians) with its physical pixel size: OME-Zarr v0.5 with a multiscale "
        "pyramid (RESULT.ome.zarr), a pyramidal OME-TIFF (RESULT.ome.tif), or an ImageJ hyperstack "
        "(RESULT_imagej.tif) that Fiji opens at the right scale.",
    )
    parser.add_argument("result", type=Path, help="result folder written by `uafp reconstruct` or the app")
    parser.add_argument("--format", choices=["ome-zarr", "ome-tiff", "imagej"], default="ome-zarr", dest="fmt")
    parser.add_argument("--out", type=Path, default=None, help="output path (default: next to RESULT)")
    parser.add_argument(
        "--min-size",
        type=int,
        default=64,
        help="pyramid: halve each side until the next level would be below this many pixels (default 64)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace the output if it exists")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from uafp_gui.errors import ConfigError
    from uafp_gui.io.ome import export_result

    if args.min_size < 1:
        raise ConfigError(f"--min-size must be >= 1 (got {args.min_size})")
    out = export_result(args.result, args.fmt, args.out, overwrite=args.overwrite, min_size=args.min_size)
    print(f"wrote {out}")
    return 0
