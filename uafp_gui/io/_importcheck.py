"""What every importer checks in a user's file before and after reading it: typed errors, one line.

`PARSER_ERRORS` are the exceptions third-party parsers (scipy.io, h5py, tifffile, Pillow, csv,
yaml) raise on a malformed file; importers turn exactly these into `DatasetError` (a programming
error elsewhere still surfaces). `check_stack_size` refuses a frame stack beyond the documented
limits (uafp_gui.limits) from its shape alone, before it is read; `frame_stack` and `numbers`
refuse what is not an intensity image or not a finite real number.
"""

from __future__ import annotations

import csv
import struct
import zlib
from typing import Any

import numpy as np

from uafp_gui.errors import DatasetError
from uafp_gui.io.pixels import FLOAT32, stored_pixels
from uafp_gui.limits import MAX_DATASET_BYTES_ENV, MAX_FRAME_PIXELS, MAX_FRAMES, max_dataset_bytes

PARSER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,  # includes UnicodeDecodeError and scipy's MatReadError
    TypeError,
    KeyError,
    IndexError,
    OSError,  # h5py's and Pillow's read errors
    EOFError,
    OverflowError,
    NotImplementedError,  # scipy: MATLAB v7.3; tifffile: unsupported compression
    RecursionError,
    struct.error,
    zlib.error,
    csv.Error,
    MemoryError,
)
# scipy.io.loadmat's Cython reader also ends a malformed file in UnboundLocalError (a NameError).
MAT_READER_ERRORS: tuple[type[BaseException], ...] = (*PARSER_ERRORS, UnboundLocalError)
# h5py reports a corrupt HDF5 file's internal errors as RuntimeError.
H5_READER_ERRORS: tuple[type[BaseException], ...] = (*PARSER_ERRORS, RuntimeError)
MAX_FIELD_VALUES = 1_000_000  # a per-frame field (NA, positions) of 10 000 frames is 20 000 values


def one_line(error: BaseException, limit: int = 200) -> str:
    """A parser's message on one line, cut to `limit` characters."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_stack_size(shape: tuple[int, ...], itemsize: int, name: str, source: Any) -> None:
    """Refuse, from its shape alone, a stack (N, H, W) beyond the limits: before it is read."""
    shape = tuple(int(n) for n in shape)
    if len(shape) < 2:
        raise DatasetError(f"{name} in {source} has shape {shape}: expected a stack of 2-D frames")
    pixels = shape[-2] * shape[-1]
    count = int(np.prod(shape[:-2], dtype=np.float64)) if len(shape) > 2 else 1
    if pixels > MAX_FRAME_PIXELS:
        raise DatasetError(
            f"{name} in {source} has {shape[-2]}x{shape[-1]} px frames, more than the {MAX_FRAME_PIXELS} pixels "
            "a frame may have: crop or bin them"
        )
    if count > MAX_FRAMES:
        raise DatasetError(f"{name} in {source} holds {count} frames, more than the {MAX_FRAMES} a dataset may hold")
    decoded = float(count) * pixels * max(int(itemsize), 2)
    if decoded > max_dataset_bytes():
        raise DatasetError(
            f"{name} in {source} is {decoded / 2**30:.1f} GiB once read, more than the "
            f"{max_dataset_bytes() / 2**30:.1f} GiB limit: crop or bin the frames, or raise {MAX_DATASET_BYTES_ENV}"
        )


def frame_stack(stack: Any, name: str, source: Any) -> np.ndarray:
    """An intensity stack in its stored pixel type (`uafp_gui.io.pixels`: uint16 for counts that
    fit, float32 otherwise, never scaled; dark-subtracted stacks may dip below zero). Complex,
    boolean, text, empty, all-dark or non-finite frames and negative integer counts are refused."""
    stack = np.asarray(stack)
    if stack.dtype.kind in "uif":  # the size from the shape alone, before any pixel is looked at
        check_stack_size(stack.shape, stack.dtype.itemsize, name, source)
    if stack.size == 0 and stack.dtype.kind in "uif":
        raise DatasetError(f"{name} in {source} is empty (shape {stack.shape})")
    return positive_somewhere(stored_pixels(stack, f"{name} in {source}"), f"{name} in {source}")


def positive_somewhere(frames: np.ndarray, what: str) -> np.ndarray:
    """`frames`, unless they are float and nowhere positive: all dark is no data (dark-subtracted
    frames may dip below zero, but not everywhere)."""
    if frames.dtype == FLOAT32 and not (frames > 0).any():
        raise DatasetError(f"{what} holds no positive value: frames are intensities (light), not a background")
    return frames


def numbers(value: Any, name: str, source: Any) -> np.ndarray:
    """A field of finite real numbers as float64 (complex, text, NaN/inf refused)."""
    array = np.asarray(value)
    if array.size > MAX_FIELD_VALUES:
        raise DatasetError(f"{name} in {source} holds {array.size} values: too many for a per-frame field")
    if array.dtype.kind == "c":
        raise DatasetError(f"{name} in {source} is complex: expected real numbers")
    if array.dtype.kind not in "uifb":
        raise DatasetError(f"{name} in {source} holds {array.dtype} values, not numbers")
    with np.errstate(over="ignore", invalid="ignore"):
        out = array.astype(np.float64)
    if not np.isfinite(out).all():
        raise DatasetError(f"{name} in {source} holds NaN/inf values")
    return out
