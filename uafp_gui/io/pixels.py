"""The one pixel-type policy of raw frames (docs/dataset_format.md section 1: uint16 or float32).

Every path that makes frames - the reader, the writer, the importers - stores what it gets the
same way: 8- and 16-bit counts and other integers from 0 to 65535 as uint16, every other real
number as float32 (never scaled, never clipped). Complex, boolean or non-numeric pixels,
negative integer counts and NaN/inf are refused. Frames of one dataset share one type: a stack
that mixes them is float32.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from uafp_gui.errors import DatasetError

UINT16 = np.dtype(np.uint16)
FLOAT32 = np.dtype(np.float32)
UINT16_MAX = 2**16 - 1


def stored_dtype(dtype: np.dtype | type, low: float | None = None, high: float | None = None) -> np.dtype:
    """The type pixels of `dtype` (with values from `low` to `high`, when known) are stored as.

    uint8/uint16 are uint16; other integers are uint16 when their values are known to fit, else
    float32; floating point is float32. `DatasetError` for what is not a real number.
    """
    dtype = np.dtype(dtype)
    if dtype in (np.uint8, np.uint16):
        return UINT16
    if dtype.kind in "ui":
        fits = low is not None and high is not None and low >= 0 and high <= UINT16_MAX
        return UINT16 if fits else FLOAT32
    if dtype.kind == "f":
        return FLOAT32
    raise DatasetError(f"pixels of type {dtype} are not real intensities: store uint16 or float32")


def stored_pixels(array: np.ndarray, what: str) -> np.ndarray:
    """`array` (a frame or a stack) converted to its stored type without losing information.

    `what` names it in errors ("frame 3 of run.tif"). Refused: complex, boolean or non-numeric
    pixels, negative integer counts, NaN/inf.
    """
    array = np.asarray(array)
    kind = array.dtype.kind
    if kind == "c":
        raise DatasetError(f"{what} is complex ({array.dtype}): frames are real intensities; store |field|^2")
    if kind == "b":
        raise DatasetError(f"{what} is boolean: frames are intensities")
    if kind not in "uif":
        raise DatasetError(f"{what} holds {array.dtype} values: frames are grey-level intensities (uint16 or float32)")
    if kind == "i" and array.size and array.min() < 0:
        raise DatasetError(
            f"{what} holds negative counts (min {array.min()}): a camera counts photons; store "
            "dark-subtracted frames as float32"
        )
    low, high = (array.min(), array.max()) if kind in "ui" and array.size else (0, 0)
    dtype = stored_dtype(array.dtype, low, high)
    if dtype == FLOAT32:
        with np.errstate(over="ignore", invalid="ignore"):
            out = array.astype(FLOAT32, copy=False)
        finite = np.isfinite(out)
        if not finite.all():
            bad = int(out.size - np.count_nonzero(finite))
            raise DatasetError(
                f"{what} contains {bad} NaN/inf pixel(s) (or values beyond float32): replace them "
                "(e.g. with the dark level)"
            )
        return out
    return array.astype(UINT16, copy=False)


def common_dtype(dtypes: Iterable[np.dtype]) -> np.dtype:
    """The one type of a dataset whose frames were stored as `dtypes`: uint16 only when all are."""
    return UINT16 if all(np.dtype(d) == UINT16 for d in dtypes) else FLOAT32
