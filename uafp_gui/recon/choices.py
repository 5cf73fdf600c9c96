"""The reconstruction's named choices (device, loss, why a run ended), torch-free so that front ends
can list them without loading the engines."""

from __future__ import annotations

from uafp_gui._compat import StrEnum
from uafp_gui.errors import ConfigError


class Device(StrEnum):
    """Where the engines compute: `auto` picks CUDA when torch sees a GPU, else the CPU."""

    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


def parse_device(name: str) -> Device:
    """The `Device` named by `name` (any case; empty: auto); `ConfigError` for any other name."""
    try:
        return Device((name or "auto").lower())
    except (ValueError, AttributeError):
        raise ConfigError(f"unknown device {name!r}: use {', '.join(Device)}") from None


class Loss(StrEnum):
    """UA-FP's data term: amplitude least squares, or the Poisson likelihood of the counts."""

    AMPLITUDE = "amplitude"
    POISSON = "poisson"


class StopReason(StrEnum):
    """Why a UA-FP run ended (`UafpReconstruction.stop_reason`, `stop_reason` in calibration.json)."""

    COMPLETED = "completed"  # ran the iterations asked for
    CONVERGED = "converged"  # the misfit stopped improving before the cap
    CANCELLED = "cancelled"  # stopped between mini-batches (GUI Stop or quit, a cancel event)
    INTERRUPTED = "interrupted"  # Ctrl-C or SIGTERM (a KeyboardInterrupt) mid-iteration
    DIVERGED = "diverged"  # the loss kept turning NaN or exploding after every roll-back
    ENGINE_ERROR = "engine_error"  # the engine raised (a torch error...): the engine's fault
    ERROR = "error"  # bad input met while running (e.g. a frame with NaN pixels)


__all__ = ["Device", "Loss", "StopReason", "parse_device"]
