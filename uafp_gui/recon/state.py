"""Saving and resuming a UA-FP reconstruction: tensors and plain values, read back with
`torch.load(weights_only=True)` (a crafted state file cannot run code)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from uafp_gui.errors import ReconstructionError
from uafp_gui.model import LedGeometry

if TYPE_CHECKING:
    from uafp_gui.recon.uafp import UafpReconstruction


def save_state(recon: UafpReconstruction, path: str | Path) -> Path:
    """Write the state of `recon` (tensors and plain values only)."""
    path = Path(path)
    torch.save(
        _plain_values(
            {
                "settings": recon.settings.__dict__,
                "iteration": recon.iteration,
                "loss_history": recon.loss_history,
                "elapsed_s": recon.elapsed_s,
                "scale": recon.scale,
                "available": recon.available.cpu(),
                "learning_rate_factor": recon.learning_rate_factor,
                # Both shape the continuation: the geometry's late start and the mini-batch order.
                "start_geometry": recon.start_geometry.to_dict() if recon.start_geometry else None,
                "generator": recon._generator.get_state(),
                **recon._snapshot(),
            }
        ),
        path,
    )
    return path


def load_state(recon: UafpReconstruction, path: str | Path) -> None:
    """Continue from a saved state (frames must be added again from the dataset).

    Only tensors and plain containers are unpickled (`weights_only=True`): a crafted state file
    cannot run code; anything else in it is a `ReconstructionError`."""
    import pickle

    path = Path(path)
    try:
        state = torch.load(path, map_location=recon.device, weights_only=True)
    except FileNotFoundError:
        raise ReconstructionError(f"state file not found: {path}: check the path") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError, AttributeError) as error:
        raise ReconstructionError(
            f"{path} is not a uafp reconstruction state, or holds more than tensors and plain values "
            f"(refused, nothing of it was run): {str(error).splitlines()[0][:160]}"
        ) from None
    if not isinstance(state, dict) or not {"object", "system", "optimisers", "scale"} <= set(state):
        raise ReconstructionError(f"{path} is not a uafp reconstruction state (fields missing)")
    recon._take_pending()
    recon.scale = state["scale"]
    recon.object = torch.nn.Parameter(state["object"].to(recon.device))
    recon.model.system.load_state_dict(state["system"])
    recon.optimisers = {}
    recon.iteration = state["iteration"]
    recon.loss_history = list(state["loss_history"])
    recon.elapsed_s = state["elapsed_s"]
    recon.learning_rate_factor = state["learning_rate_factor"]
    if "dc_edge_px" in state:
        recon.model.dc_edge_px = float(state["dc_edge_px"])
    recon._geometry_initialised_with = 10**9
    recon.start_search = recon.start_search or {}
    if state.get("start_geometry"):
        recon.start_geometry = LedGeometry(**state["start_geometry"])
    if "generator" in state:
        recon._generator.set_state(state["generator"].cpu())
    recon._build_optimisers()
    for name, optimiser_state in state["optimisers"].items():
        if name in recon.optimisers:
            recon.optimisers[name].load_state_dict(optimiser_state)


def _plain_values(value: Any) -> Any:
    """Tensors and plain Python values only (numpy scalars become floats/ints), so that
    `load_state` can read the file with `torch.load(weights_only=True)`."""
    if isinstance(value, dict):
        return {key: _plain_values(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain_values(item) for item in value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, str):
        return str(value)  # an enum member (Loss, Device) as its plain string
    return value
