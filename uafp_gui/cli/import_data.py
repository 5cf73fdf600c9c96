"""`uafp import zheng|folder|fpm-mat|ptylab|micromanager ...`: convert other people's FP data into a dataset TIFF."""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable
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

  uafp import fpm-mat FILE.mat OUT.tif [--wavelength-um W] [--led-pitch-mm 4]
      a Caltech FPM-INR / APIC MATLAB file (v5 or v7.3): I_low (or imlow), per-frame
      calibrated na_calib, na_cal, mag, dpix_c; the calibrated NAs become each frame's
      illumination_na, which the reconstruction uses as its nominal illumination.

  uafp import ptylab FILE.hdf5 OUT.tif [--objective-na NA]
      a PtyLab FPM HDF5 file: ptychogram, encoder (LED positions, m), dxd, magnification,
      wavelength, zled[, NA][, orientation].

  uafp import micromanager DIR_OR_OME_TIFF OUT.tif [--geometry geometry.json] [--leds leds.csv]
      a Micro-Manager (MMStack) or pymmcore-plus OME-TIFF acquisition, one frame per LED
      pattern; the patterns from --leds, the per-image metadata (--led-property, default
      LEDArray-Pattern) or a uafp MDASequence's metadata; the optics from --geometry.

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

    fpm = kinds.add_parser(
        "fpm-mat",
        help="a Caltech FPM-INR / APIC MATLAB file (I_low, na_calib, na_cal, mag, dpix_c)",
        description="Convert an FPM-INR / APIC .mat file (v5 or v7.3). Each frame keeps its calibrated "
        "illumination NA; the LED grid is fitted to them.",
    )
    fpm.add_argument("mat", type=Path, help="the .mat file")
    fpm.add_argument("out", type=Path, help="dataset TIFF to write")
    fpm.add_argument("--wavelength-um", type=float, default=None, help="needed when the file holds no lambda")
    fpm.add_argument("--led-pitch-mm", type=float, default=4.0, help="LED pitch of the array (default 4)")
    fpm.add_argument("--led-height-mm", type=float, default=None, help="default: fitted to the NAs")
    fpm.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    fpm.set_defaults(func=run_fpm_mat)

    ptylab = kinds.add_parser(
        "ptylab",
        help="a PtyLab FPM HDF5 file (ptychogram, encoder, dxd, magnification, wavelength, zled)",
        description="Convert a PtyLab FPM HDF5 file; each frame keeps its LED's illumination NA.",
    )
    ptylab.add_argument("h5", type=Path, help="the .hdf5/.h5 file")
    ptylab.add_argument("out", type=Path, help="dataset TIFF to write")
    ptylab.add_argument("--objective-na", type=float, default=None, help="needed when the file holds no NA")
    ptylab.add_argument("--led-pitch-mm", type=float, default=None, help="default: the median LED spacing")
    ptylab.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    ptylab.set_defaults(func=run_ptylab)

    mm = kinds.add_parser(
        "micromanager",
        help="a Micro-Manager / pymmcore-plus OME-TIFF acquisition (one frame per LED pattern)",
        description="Convert a Micro-Manager MMStack OME-TIFF (or one written by pymmcore-plus) into a dataset.",
    )
    mm.add_argument("source", type=Path, help="the acquisition's folder or its .ome.tif")
    mm.add_argument("out", type=Path, help="dataset TIFF to write")
    mm.add_argument("--geometry", type=Path, default=None, metavar="JSON", help="dataset fields except frames")
    mm.add_argument("--leds", type=Path, default=None, metavar="CSV", help="row,col[,exposure_ms] per frame")
    mm.add_argument(
        "--led-property", default="LEDArray-Pattern", help="per-image metadata key holding 'row,col;row,col'"
    )
    mm.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    mm.set_defaults(func=run_micromanager)
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


def _imported(args: argparse.Namespace, write: Callable[[], object]) -> int:
    """Check --out, `write` the dataset there, print what was written."""
    _check_out(args.out, args.overwrite)
    write()
    _summary(args.out)
    return 0


def run_zheng(args: argparse.Namespace) -> int:
    from uafp_gui.io.importers import import_zheng_mat

    return _imported(args, lambda: import_zheng_mat(args.mat, args.out, overwrite=args.overwrite))


def run_folder(args: argparse.Namespace) -> int:
    from uafp_gui.io.importers import import_folder

    return _imported(
        args, lambda: import_folder(args.folder, args.leds, args.geometry, args.out, overwrite=args.overwrite)
    )


def run_fpm_mat(args: argparse.Namespace) -> int:
    from uafp_gui.io.import_public import import_fpm_mat

    return _imported(
        args,
        lambda: import_fpm_mat(
            args.mat,
            args.out,
            wavelength_um=args.wavelength_um,
            led_pitch_mm=args.led_pitch_mm,
            led_height_mm=args.led_height_mm,
            overwrite=args.overwrite,
        ),
    )


def run_ptylab(args: argparse.Namespace) -> int:
    from uafp_gui.io.import_public import import_ptylab_hdf5

    return _imported(
        args,
        lambda: import_ptylab_hdf5(
            args.h5, args.out, objective_na=args.objective_na, led_pitch_mm=args.led_pitch_mm, overwrite=args.overwrite
        ),
    )


def run_micromanager(args: argparse.Namespace) -> int:
    from uafp_gui.io.import_mm import import_micromanager

    return _imported(
        args,
        lambda: import_micromanager(
            args.source,
            args.out,
            geometry=args.geometry,
            leds_csv=args.leds,
            led_property=args.led_property,
            overwrite=args.overwrite,
        ),
    )
