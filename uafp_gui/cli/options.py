"""argparse types for numbers: finite floats and bounded integers, so that NaN, inf and
400-digit integers are refused at the command line with argparse's one-line error."""

from __future__ import annotations

import argparse
import math

from uafp_gui.limits import MAX_INT_DIGITS


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a finite number")
    return value


def whole_number(text: str) -> int:
    stripped = text.strip().lstrip("+-")
    if not stripped.isascii() or not stripped.isdigit() or len(stripped) > MAX_INT_DIGITS:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a whole number (at most {MAX_INT_DIGITS} digits)")
    return int(text)
