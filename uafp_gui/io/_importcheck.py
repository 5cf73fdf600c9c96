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
    """An intensity stack: uint8/uint16 (and non-negative integers below 2**16) stay uint16, other
    real numbers become float32 (never scaled; dark-subtracted stacks may dip below zero). Complex,
    boolean, text, empty, all-dark or non-finite frames and negative integer counts are refused."""
    stack = np.asarray(stack)
    kind = stack.dtype.kind
    if kind == "c":
        raise DatasetError(f"{name} in {source} is complex: FP frames are real intensities (import |field|^2)")
    if kind == "b":
        raise DatasetError(f"{name} in {source} is boolean: FP frames are intensities")
    if kind not in "uif":
        raise DatasetError(f"{name} in {source} holds {stack.dtype} values, not numbers")
    check_stack_size(stack.shape, stack.dtype.itemsize, name, source)
    if stack.size == 0:
        raise DatasetError(f"{name} in {source} is empty (shape {stack.shape})")
    if stack.dtype in (np.uint8, np.uint16):
        return stack.astype(np.uint16)
    if kind == "i" and stack.min() < 0:
        raise DatasetError(f"{name} in {source} holds negative counts (min {stack.min()}): a camera counts photons")
    if kind in "ui" and stack.max() < 2**16:
        return stack.astype(np.uint16)
    with np.errstate(over="ignore", invalid="ignore"):
        out = stack.astype(np.float32)
    if not np.isfinite(out).all():
        raise DatasetError(f"{name} in {source} holds NaN/inf pixels (or values beyond float32): replace them")
    if not (out > 0).any():  # dark-subtracted float stacks may dip below zero; all dark is no data
        raise DatasetError(f"{name} in {source} holds no positive value: frames are intensities (light)")
    return out


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
