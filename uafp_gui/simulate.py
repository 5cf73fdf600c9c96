"""Synthetic FP datasets: the built-in sample through the forward model of an imperfect microscope.

`SimulationSettings` holds every knob with units in its name; `PRESETS` are the named starting
points (`ideal`, `misaligned`, `lowlight`). `simulate` returns the dataset (metadata and uint16
frames with Poisson and read noise, offset and quantisation) and the ground truth (object,
pupil and the true calibration); `write_simulation` saves both the way `uafp simulate` does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from uafp_gui import __version__
from uafp_gui.errors import ConfigError
from uafp_gui.limits import check_simulation_size
from uafp_gui.model import HasOptics, LedGeometry, Optics
from uafp_gui.physics.patterns import spiral_order, square_leds

if TYPE_CHECKING:
    import torch

    from uafp_gui.io.schema import DatasetMeta
    from uafp_gui.physics.forward import ForwardModel

# torch and the forward model load when a simulation is rendered, not when its settings are read:
# the CLI's argument checks and the GUI's first window need only `SimulationSettings`/`PRESETS`.


@dataclass(frozen=True)
class SimulationSettings(HasOptics):
    """Microscope, acquisition and error model of a simulated dataset.

    `optics` is the nominal microscope (its fields read as `settings.wavelength_um` etc.); the
    LED square of `led_grid` x `led_grid` is centred on the LED nearest its axis. `replace`,
    `to_dict` and `from_dict` take the optics fields by name, flat, beside the others.
    """

    optics: Optics = field(default_factory=Optics)
    led_grid: int = 15
    frame_size: int = 128
    upsample: int = 4
    # Hidden errors of the simulated microscope.
    shift_x_mm: float = 0.0
    shift_y_mm: float = 0.0
    rotation_deg: float = 0.0
    height_error_mm: float = 0.0
    zernike_rad: dict[int, float] = field(default_factory=dict)
    led_brightness_spread: float = 0.0
    # Camera.
    photons_per_pixel: float = 30000.0
    read_noise_e: float = 0.5
    bit_depth: int = 16
    camera_offset: float = 100.0
    exposure_ms: float = 10.0
    pixel_integration: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.optics, Mapping):
            object.__setattr__(self, "optics", Optics(**self.optics))

    def to_dict(self) -> dict[str, Any]:
        """Every field, flat (the optics fields beside the others), as plain JSON values."""
        out: dict[str, Any] = self.optics.to_dict()
        for spec in fields(self):
            if spec.name != "optics":
                out[spec.name] = getattr(self, spec.name)
        out["zernike_rad"] = {str(j): v for j, v in self.zernike_rad.items()}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SimulationSettings:
        """From `to_dict`'s flat object (unknown keys ignored)."""
        optics, rest = Optics.split(data)
        known = {spec.name for spec in fields(cls)} - {"optics"}
        values = {k: v for k, v in rest.items() if k in known}
        if "zernike_rad" in values:
            values["zernike_rad"] = {int(j): float(v) for j, v in values["zernike_rad"].items()}
        return cls(optics=Optics(**optics), **values)

    def check_limits(self) -> None:
        """Refuse, before anything is allocated, a simulation beyond the documented limits
        (uafp_gui.limits): frame size, upsample, LED grid and array, bit depth, photons."""
        check_simulation_size(
            self.frame_size, self.upsample, self.pixel_integration, self.led_grid,
            self.led_array_shape, self.bit_depth, self.photons_per_pixel,
        )
        leds = square_leds(self.led_grid, self.center_led)
        rows, cols = self.led_array_shape
        if not all(0 <= r < rows and 0 <= c < cols for r, c in (leds[0], leds[-1])):
            raise ConfigError(
                f"--led-grid {self.led_grid} around --led-on-axis {self.center_led} reaches LEDs "
                f"{leds[0]} to {leds[-1]}, outside the {rows}x{cols} array (--led-array-shape): "
                "lower --led-grid or move --led-on-axis"
            )

    @property
    def true_geometry(self) -> LedGeometry:
        return LedGeometry(
            self.shift_x_mm, self.shift_y_mm, self.rotation_deg, self.led_height_mm + self.height_error_mm
        )


PRESETS: dict[str, SimulationSettings] = {
    "ideal": SimulationSettings(),
    "misaligned": SimulationSettings(
        # 3000 photons at a 25 ms reference: the simulated microscope's default 10 ms exposure gives 1200,
        # whose brightest bright-field pixels (~2.6x the mean) stay near 80 % of the 12-bit range.
        exposure_ms=25.0,
        shift_x_mm=1.2,
        shift_y_mm=-0.8,
        rotation_deg=2.5,
        height_error_mm=4.0,
        zernike_rad={4: 1.5, 5: 0.5, 6: -0.4, 7: 0.3},
        led_brightness_spread=0.15,
        photons_per_pixel=3000.0,
        read_noise_e=2.0,
        bit_depth=12,
    ),
}
PRESETS["lowlight"] = PRESETS["misaligned"].replace(photons_per_pixel=300.0)


@dataclass
class Simulation:
    """A simulated dataset and its ground truth."""

    meta: DatasetMeta
    frames: np.ndarray  # (N, H, W) uint16 camera counts
    object_truth: np.ndarray  # complex (sH, sW)
    pupil_truth: np.ndarray  # complex (H, W)
    calibration_truth: dict
    settings: SimulationSettings


def simulate(settings: SimulationSettings, device: str = "cpu") -> Simulation:
    s = settings
    s.check_limits()
    leds = spiral_order(square_leds(s.led_grid, s.center_led), s.center_led)
    meta = nominal_meta(s, leds)  # validates the LEDs against the array, before torch loads

    import torch

    from uafp_gui.physics.forward import synthetic_aperture_cutoff

    rng = np.random.default_rng(s.seed)
    model, obj, spectrum = true_microscope_model(s, meta, device)
    setup = model.setup
    brightness = np.clip(1 + s.led_brightness_spread * rng.standard_normal(len(leds)), 0.2, None)
    with torch.no_grad():
        # Normalised frames are counts per ms: gain = photons * brightness / exposure.
        model.system.frame_gain.copy_(torch.as_tensor(brightness * s.photons_per_pixel / s.exposure_ms))
        expected = (
            torch.cat(
                [model(spectrum, torch.arange(k, min(k + 32, len(leds)))) for k in range(0, len(leds), 32)]
            )
            .cpu()
            .numpy()
        )
        frame_positions = model.frame_led_positions_mm().cpu().numpy()
        pupil = model.pupil().cpu().numpy()
        cutoff = synthetic_aperture_cutoff(model)
    electrons = rng.poisson(np.clip(expected * s.exposure_ms, 0, None)).astype(np.float64)
    electrons += s.read_noise_e * rng.standard_normal(electrons.shape)
    counts = np.clip(np.round(electrons + s.camera_offset), 0, 2**s.bit_depth - 1).astype(np.uint16)
    calibration = {
        "format": "uafp-calibration",
        "version": 1,
        "led_geometry": s.true_geometry.to_dict(),
        "zernike_rad": {str(j): float(s.zernike_rad.get(j, 0.0)) for j in range(2, 22)},
        "frame_gain": [float(g) for g in brightness * s.photons_per_pixel / s.exposure_ms],
        "led_positions_mm": frame_positions.tolist(),
        "object_pixel_um": setup.object_pixel_um,
        "final_loss": 0.0,
        "iterations": 0,
        "elapsed_s": 0.0,
        "source_dataset": "",
        "software": f"uafp_gui {__version__}",
        "ground_truth": True,
        "synthetic_aperture_na": float(cutoff * s.wavelength_um),
        "simulation": s.to_dict(),
    }
    return Simulation(meta, counts, obj, pupil, calibration, s)


def nominal_meta(settings: SimulationSettings, leds: list[tuple[int, int]]):
    """Dataset metadata of the simulated microscope as its user knows it (nominal, errors hidden):
    one frame per LED of `leds`, in that order."""
    from uafp_gui.io.schema import DatasetMeta, FrameSpec

    s = settings
    return DatasetMeta(
        optics=s.optics,
        frames=tuple(FrameSpec(leds=(led,), exposure_ms=s.exposure_ms) for led in leds),
        camera_offset=s.camera_offset,
        bit_depth=s.bit_depth,
        sample="uafp_gui built-in test sample (resolution target and cells)",
        notes="simulated by uafp simulate",
        software=f"uafp_gui {__version__}",
    )


def true_microscope_model(
    settings: SimulationSettings, meta, device: str = "cpu"
) -> tuple[ForwardModel, np.ndarray, torch.Tensor]:
    """The simulated microscope for `meta`'s frames: forward model with the hidden geometry and
    aberrations set (frame gains left at 1), the built-in sample and its spectrum.

    Shared by `simulate` and the simulated camera (`uafp_gui.simulated.camera`).
    """
    import torch

    from uafp_gui.physics.forward import ForwardModel, OpticalSetup, spectrum_of
    from uafp_gui.sample import load_sample

    s = settings
    setup = OpticalSetup.from_meta(meta, (s.frame_size, s.frame_size), s.upsample, s.pixel_integration)
    model = ForwardModel(setup, device=device)
    with torch.no_grad():
        model.system.set_geometry(s.true_geometry)
        model.system.set_zernike(s.zernike_rad)
        obj = load_sample(setup.object_shape)
        spectrum = spectrum_of(torch.as_tensor(obj, dtype=torch.complex64, device=model.device))
    return model, obj, spectrum


def truth_folder_for(dataset_path: Path) -> Path:
    """`run.tif` -> `run_truth/` beside it."""
    return dataset_path.with_name(dataset_path.stem + "_truth")


def write_simulation(simulation: Simulation, dataset_path: Path) -> Path:
    """Write the dataset and its ground-truth result folder; return the truth folder."""
    from uafp_gui.io.calibration import Calibration
    from uafp_gui.io.result import write_result
    from uafp_gui.io.writer import write_dataset

    dataset_path = Path(dataset_path)
    write_dataset(dataset_path, simulation.meta, simulation.frames)
    truth = truth_folder_for(dataset_path)
    calibration = dict(simulation.calibration_truth, source_dataset=dataset_path.name)
    write_result(
        truth,
        amplitude=np.abs(simulation.object_truth).astype(np.float32),
        phase=np.angle(simulation.object_truth).astype(np.float32),
        pupil_amplitude=np.abs(simulation.pupil_truth).astype(np.float32),
        pupil_phase=np.angle(simulation.pupil_truth).astype(np.float32),
        calibration=Calibration.from_dict(calibration),
    )
    return truth


def describe(settings: SimulationSettings) -> str:
    g = settings.true_geometry
    z = ", ".join(f"Z{j}={v:+.2f}" for j, v in sorted(settings.zernike_rad.items())) or "none"
    return (
        f"{settings.led_grid}x{settings.led_grid} LEDs, {settings.frame_size} px frames, "
        f"shift ({g.shift_x_mm:+.2f}, {g.shift_y_mm:+.2f}) mm, rotation {g.rotation_deg:+.2f} deg, "
        f"height {g.height_mm:.2f} mm, aberrations {z}, {settings.photons_per_pixel:g} photons/px, "
        f"brightness spread {100 * settings.led_brightness_spread:.0f} %"
    )


__all__ = [
    "PRESETS",
    "Simulation",
    "SimulationSettings",
    "describe",
    "simulate",
    "true_microscope_model",
    "write_simulation",
]
