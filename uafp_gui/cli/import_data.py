"""`uafp import zheng|folder ...`: convert other people's FP data into a dataset TIFF."""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

from uafp_gui.errors import ConfigError

_DESCRIPTION = """\
Convert FP data from elsewhere into a uafp dataset (one multi-page TIFF with the metadata
JSON embedded, docs/dataset_format.md) that `uafp reconstruct` and the GUI read.

  uafp import zheng MAT OUT.tif
      the public blood-smear capture (Smart Imaging Lab, bloodsmear_green.mat): 225 frames,
      15x15 LEDs lit in a spiral from the central LED; geometry filled in as published.

  uafp import folder DIR --leds leds.csv --geometry geometry.json OUT.tif
      one TIFF or PNG per frame (16-bit stays 16-bit) in DIR, plus
      leds.csv      header row,col[,file][,exposure_ms][,intensity], one line per frame;
                    0-based LED [row, col]; without a file column the images are taken in
                    natural order (img2 before img10); lines naming the same file add LEDs
                    to that frame (multiplexed illumination)
      geometry.json the dataset fields except frames, e.g.
                    {"wavelength_um": 0.532, "objective_na": 0.1, "magnification": 4,
                     "camera_pixel_um": 3.45, "led_pitch_mm": 4, "led_height_mm": 90,
                     "led_array_shape": [32, 32], "led_on_axis": [15.5, 15.5],
                     "exposure_ms": 20}
                    (exposure_ms here is the default for CSV lines without one; YAML works
                    too when PyYAML is installed)

A third-party TIFF stack needs no import: put its metadata JSON next to it as
<stem>.json and read it directly.
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "import",
        help="convert external FP data (Zheng MAT file, folder of images) to a dataset TIFF",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    kinds = parser.add_subparsers(dest="source", metavar="SOURCE")

    zheng = kinds.add_parser(
        "zheng",
        help="the public blood-smear MAT file (imlow_HDR, spiral LED order)",
        description="Convert bloodsmear_green.mat (imlow_HDR, 225 frames) to a dataset TIFF. "
        "The authors' own LED calibration is recorded in the notes, not applied.",
    )
    zheng.add_argument("mat", type=Path, help="bloodsmear_green.mat")
    zheng.add_argument("out", type=Path, help="dataset TIFF to write, e.g. bloodsmear.tif")
    zheng.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    zheng.set_defaults(func=run_zheng)

    folder = kinds.add_parser(
        "folder",
        help="a folder of TIFF/PNG frames + LED CSV + geometry JSON",
        description="Build a dataset from one image per frame, an LED list and the geometry "
        "(see `uafp import --help` for the file formats).",
    )
    folder.add_argument("folder", type=Path, help="folder holding one TIFF/PNG per frame")
    folder.add_argument(
        "--leds", type=Path, required=True, metavar="CSV",
        help="LED list: header row,col[,file][,exposure_ms][,intensity]",
    )
    folder.add_argument(
        "--geometry", type=Path, required=True, metavar="JSON",
        help="dataset fields (wavelength_um, objective_na, ...) as JSON or YAML",
    )
    folder.add_argument("out", type=Path, help="dataset TIFF to write")
    folder.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    folder.set_defaults(func=run_folder)
    parser.set_defaults(func=lambda args: _missing_source(parser))


def _missing_source(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 1


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} already exists: pass --overwrite to replace it")
    if not out.parent.exists():
        raise ConfigError(f"folder {out.parent} does not exist: create it first")


def _summary(out: Path) -> None:
    from uafp_gui.io.dataset import read_dataset

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = read_dataset(out)
    count, height, width = dataset.frames.shape
    meta = dataset.meta
    print(
        f"wrote {out}: {count} frames {height}x{width} {dataset.frames.dtype}, "
        f"{meta.wavelength_um:g} um, NA {meta.objective_na:g}, "
        f"sample pixel {meta.sample_pixel_um:g} um"
    )


def run_zheng(args: argparse.Namespace) -> int:
    from uafp_gui.io.importers import import_zheng_mat

    _check_out(args.out, args.overwrite)
    import_zheng_mat(args.mat, args.out, overwrite=args.overwrite)
    _summary(args.out)
    return 0


def run_folder(args: argparse.Namespace) -> int:
    from uafp_gui.io.importers import import_folder

    _check_out(args.out, args.overwrite)
    import_folder(args.folder, args.leds, args.geometry, args.out, overwrite=args.overwrite)
    _summary(args.out)
    return 0
