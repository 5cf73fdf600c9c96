"""LED sets and orders used by simulation and acquisition plans (pure geometry, no devices)."""

from __future__ import annotations

import math

from uafp_gui.model import RowCol, illumination_na


def square_leds(n: int, center: RowCol) -> list[RowCol]:
    """The n x n block of (row, col) LEDs around `center` (for even n, centre is upper-left of middle)."""
    half = n // 2
    r0, c0 = center[0] - half, center[1] - half
    return [(r0 + i, c0 + j) for i in range(n) for j in range(n)]


def spiral_order(leds: list[RowCol], center: RowCol) -> list[RowCol]:
    """`leds` ordered on the square spiral from `center` outward: right, down, left, left, up, up, ...

    This is the order of the classic LED-array FP papers (x = column, y = row, down = +row);
    LEDs of the set the spiral never reaches are appended by distance.
    """
    wanted = set(leds)
    ordered: list[RowCol] = []
    row, col = center
    if (row, col) in wanted:
        ordered.append((row, col))
    moves = [(0, 1), (1, 0), (0, -1), (-1, 0)]
    step, direction = 1, 0
    extent = max(max(abs(r - center[0]), abs(c - center[1])) for r, c in leds) if leds else 0
    while step <= 2 * extent + 2:
        for _ in range(2):
            dr, dc = moves[direction % 4]
            for _ in range(step):
                row, col = row + dr, col + dc
                if (row, col) in wanted:
                    ordered.append((row, col))
            direction += 1
        step += 1
    rest = sorted(wanted - set(ordered), key=lambda led: math.hypot(led[0] - center[0], led[1] - center[1]))
    return ordered + rest


def disk_leds(
    array_shape: tuple[int, int],
    center: tuple[float, float],
    pitch_mm: float,
    height_mm: float,
    max_illumination_na: float,
) -> list[RowCol]:
    """LEDs whose nominal illumination NA (sin of the angle) is at most `max_illumination_na`."""
    return [
        (row, col)
        for row in range(array_shape[0])
        for col in range(array_shape[1])
        if illumination_na((row, col), center, pitch_mm, height_mm) <= max_illumination_na + 1e-12
    ]
