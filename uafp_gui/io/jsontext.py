"""One JSON parser for everything a user or a device hands us: typed errors, no surprises.

`json.loads` alone lets through NaN/Infinity, numbers that overflow to inf (1e400), and raises
`RecursionError` on deeply nested text or `ValueError` on integers of thousands of digits;
`parse_json` turns each of those into the caller's typed error with one line naming the source.
"""

from __future__ import annotations

import json
import math
from typing import Any

from uafp_gui.errors import DatasetError, UafpError
from uafp_gui.limits import MAX_JSON_CHARS, MAX_JSON_DEPTH


class _Rejected(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise _Rejected(f"{name} is not a number JSON allows")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Rejected(f"{text[:40]} is too large for a number")
    return value


def _depth(value: Any, limit: int) -> int:
    """Nesting depth, iteratively (never recursion), stopping once past `limit`."""
    stack = [(value, 1)]
    deepest = 0
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
    return deepest


def parse_json(text: str | bytes, source: str, error: type[UafpError] = DatasetError) -> Any:
    """Parse `text`; any problem raises `error` with one line `"{source} ...: what to do"`."""
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as problem:
            raise error(f"{source} is not UTF-8 text ({problem.reason} at byte {problem.start})") from None
    if not isinstance(text, str):
        raise error(f"{source} must be JSON text (got {type(text).__name__})")
    if len(text) > MAX_JSON_CHARS:
        raise error(f"{source} is {len(text)} characters long, more than the {MAX_JSON_CHARS} a JSON file may have")
    try:
        value = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except json.JSONDecodeError as problem:
        raise error(
            f"{source} is not valid JSON: {problem.msg} at line {problem.lineno} column {problem.colno} "
            f"(char {problem.pos}): fix the file with a JSON validator"
        ) from None
    except RecursionError:
        raise error(f"{source} is nested too deeply to be a uafp JSON file") from None
    except ValueError as problem:  # _Rejected, or an integer of thousands of digits
        raise error(f"{source} holds an invalid number ({str(problem)[:80]}): write plain finite numbers") from None
    if _depth(value, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise error(f"{source} is nested more than {MAX_JSON_DEPTH} levels deep: not a uafp JSON file")
    return value
