"""The documented size and work limits (README "Limits"), in one place.

Every reader, importer, plan and the simulator checks these before it allocates anything or runs
a device, and refuses with one line. Standard library only (no numpy, no torch): the CLI's
argument checks import this before anything heavy loads.
"""

from __future__ import annotations

import math
import numbers
import os

from uafp_gui.errors import ConfigError

# Datasets (uafp_gui.io.schema, uafp_gui.io.tiff).
MAX_FRAME_PIXELS = 2**26  # 64 Mpx: 8192 x 8192
MAX_FRAMES = 10_000
MAX_DATASET_BYTES_ENV = "UAFP_MAX_DATASET_BYTES"
DEFAULT_MAX_DATASET_BYTES = 4 * 2**30  # decoded

# LED arrays and acquisition plans (uafp_gui.model, uafp_gui.acquisition.plan, uafp_gui.devices).
MAX_LED_ARRAY_SIDE = 1024  # rows and columns of an LED array
MAX_PLAN_LEDS = MAX_FRAMES  # frames a plan may hold

# Reconstruction (uafp_gui.recon) and simulation (uafp_gui.simulate).
MAX_UPSAMPLE = 16
MAX_OBJECT_SIDE_PX = 8192  # the reconstructed object grid: 8192 x 8192 complex64 is 512 MiB
MAX_PIXEL_INTEGRATION = 8
MIN_SIMULATED_FRAME_SIDE = 16
# A simulation holds its expected, noisy and quantised frames at once (~24 bytes a pixel): 2**27
# dataset pixels (e.g. 225 frames of 768 x 768 px, or 8192 frames of 128 x 128 px) stay near 3 GiB.
MAX_SIMULATED_PIXELS = 2**27
MAX_PHOTONS_PER_PIXEL = 1e9  # numpy's Poisson sampler refuses means near 1e19

# Aberrations (uafp_gui.physics.zernike, uafp_gui.io.calibration).
MAX_NOLL_INDEX = 21

# Text inputs (uafp_gui.io.jsontext, uafp_gui.io.importers, uafp_gui.cli.options).
MAX_JSON_CHARS = 64 * 2**20  # a metadata file of 10 000 frames is well under 2 MB
MAX_JSON_DEPTH = 64
MAX_CSV_LINES = 100_000
MAX_INT_DIGITS = 12

# Serial replies of an LED array (uafp_gui.devices.illuminate).
MAX_REPLY_LINES = 4096  # `help` and `pprops` are a few lines; a stream of lines is not an LED array
MAX_REPLY_LINE_CHARS = 16384


def max_dataset_bytes() -> int:
    """Decoded size a dataset may reach: `UAFP_MAX_DATASET_BYTES` or 4 GiB."""
    text = os.environ.get(MAX_DATASET_BYTES_ENV, "")
    try:
        value = int(text) if text else DEFAULT_MAX_DATASET_BYTES
    except ValueError:
        value = DEFAULT_MAX_DATASET_BYTES
    return value if value > 0 else DEFAULT_MAX_DATASET_BYTES


def _whole(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_work_size(frame_shape: tuple[int, ...], upsample: int, pixel_integration: int = 1) -> None:
    """Refuse, before anything is allocated, an object grid beyond the documented limits."""
    if not _whole(upsample) or not 1 <= upsample <= MAX_UPSAMPLE:
        raise ConfigError(f"--upsample must be a whole number 1 to {MAX_UPSAMPLE} (got {upsample!r})")
    if not _whole(pixel_integration) or not 1 <= pixel_integration <= MAX_PIXEL_INTEGRATION:
        raise ConfigError(
            f"pixel_integration must be a whole number 1 to {MAX_PIXEL_INTEGRATION} (got {pixel_integration!r})"
        )
    side = max(int(n) for n in frame_shape) * int(upsample)
    if side > MAX_OBJECT_SIDE_PX:
        raise ConfigError(
            f"{'x'.join(str(int(n)) for n in frame_shape)} px frames x upsample {upsample} make a {side} px object, "
            f"more than the {MAX_OBJECT_SIDE_PX} px limit: lower --upsample or crop the frames"
        )


def check_simulation_size(
    frame_size: int,
    upsample: int,
    pixel_integration: int,
    led_grid: int,
    led_array_shape: tuple[int, int],
    bit_depth: int,
    photons_per_pixel: float,
) -> None:
    """Refuse a simulation beyond the documented limits before anything is rendered (`uafp simulate`)."""
    if not _whole(frame_size) or frame_size < MIN_SIMULATED_FRAME_SIDE or frame_size**2 > MAX_FRAME_PIXELS:
        raise ConfigError(
            f"--frame-size must be a whole number {MIN_SIMULATED_FRAME_SIDE} to {math.isqrt(MAX_FRAME_PIXELS)} "
            f"(got {frame_size!r})"
        )
    check_work_size((frame_size, frame_size), upsample, pixel_integration)
    largest = math.isqrt(MAX_PLAN_LEDS)
    if not _whole(led_grid) or not 1 <= led_grid <= largest:
        raise ConfigError(f"--led-grid must be a whole number 1 to {largest} (got {led_grid!r})")
    if len(led_array_shape) != 2 or not all(_whole(n) and 1 <= n <= MAX_LED_ARRAY_SIDE for n in led_array_shape):
        raise ConfigError(
            f"--led-array-shape must be two whole numbers 1 to {MAX_LED_ARRAY_SIDE} (got {tuple(led_array_shape)!r})"
        )
    if not _whole(bit_depth) or not 1 <= bit_depth <= 16:
        raise ConfigError(f"--bit-depth must be a whole number 1 to 16 (got {bit_depth!r})")
    if not 0 <= photons_per_pixel <= MAX_PHOTONS_PER_PIXEL:
        raise ConfigError(f"--photons-per-pixel must be 0 to {MAX_PHOTONS_PER_PIXEL:g} (got {photons_per_pixel!r})")
    pixels = led_grid**2 * frame_size**2
    if pixels > MAX_SIMULATED_PIXELS:
        raise ConfigError(
            f"{led_grid}x{led_grid} frames of {frame_size}x{frame_size} px are {pixels / 2**20:.0f} Mpx, more than "
            f"the {MAX_SIMULATED_PIXELS // 2**20} Mpx a simulation may render: lower --led-grid or --frame-size"
        )
    decoded = pixels * 2
    if decoded > max_dataset_bytes():
        raise ConfigError(
            f"the simulated dataset would decode to {decoded / 2**30:.1f} GiB, more than the "
            f"{max_dataset_bytes() / 2**30:.1f} GiB limit ({MAX_DATASET_BYTES_ENV}): lower --led-grid or --frame-size"
        )
