"""What every reconstruction engine shares: device choice, measurements, start object, results.

A `ReconstructionResult` is engine-independent; `save_result` writes it as the result folder of
spec section 3 (plus `report.png` when asked), so classic and UA-FP results read the same way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from uafp_gui import __version__
from uafp_gui.errors import ConfigError, ReconstructionError
from uafp_gui.io.calibration import Calibration
from uafp_gui.io.result import write_result
from uafp_gui.model import LedGeometry
from uafp_gui.physics.forward import ForwardModel, OpticalSetup, object_of, spectrum_of
from uafp_gui.recon.choices import Device, parse_device


def resolve_device(name: str = Device.AUTO) -> torch.device:
    """The torch device of `name`; `cuda` without a GPU is a clear error."""
    device = parse_device(name)
    if device is Device.AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device is Device.CUDA and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but torch sees no CUDA GPU: use --device cpu or auto")
    return torch.device(device.value)


def measurements_of(dataset, device: torch.device) -> torch.Tensor:
    """(N, H, W) float32 frames normalised to counts per ms at unit LED drive, negatives clipped."""
    frames = dataset.normalised_frames(np.float32)
    if frames.shape[0] == 0:
        raise ReconstructionError(f"{dataset.path}: the dataset holds no frame yet")
    if not np.isfinite(frames).all():
        raise ReconstructionError(f"{dataset.path}: frames contain NaN/inf pixels: replace them before reconstructing")
    frames = np.clip(frames, 0, None)
    if not frames.any():
        raise ReconstructionError(
            f"{dataset.path}: every pixel of every frame is at or below the dark level "
            f"(camera_offset {dataset.meta.camera_offset:g}): nothing to reconstruct; check camera_offset"
        )
    return torch.as_tensor(frames, device=device)


# The documented limits (README, "Limits") and their check live in uafp_gui.limits.
from uafp_gui.limits import MAX_OBJECT_SIDE_PX, MAX_UPSAMPLE, check_work_size  # noqa: E402, F401


def build_model(dataset, upsample: int, pixel_integration: int, device: torch.device) -> ForwardModel:
    """The forward model of `dataset` (only its frames present on disk)."""
    check_work_size(dataset.frames.shape[1:], upsample, pixel_integration)
    setup = OpticalSetup.from_meta(dataset.meta, dataset.frames.shape[1:], upsample, pixel_integration)
    try:
        model = ForwardModel(setup, device=device)
        with torch.no_grad():
            model.crop_indices(*model.crop_plan(model.illumination_frequencies())[:2])
    except ValueError as error:
        raise ConfigError(str(error)) from None
    return model


def apply_calibration(model: ForwardModel, calibration: Calibration | None) -> None:
    """Start the model's system from a saved calibration (geometry and aberrations)."""
    if calibration is None:
        return
    model.system.set_geometry(calibration.led_geometry)
    model.system.set_zernike({j: v for j, v in calibration.zernike_rad.items() if j >= 2})
    if len(calibration.frame_gain) == model.setup.n_frames:
        with torch.no_grad():
            model.system.frame_gain.copy_(torch.as_tensor(calibration.frame_gain))


def illumination_order(model: ForwardModel) -> torch.Tensor:
    """Frame indices from the smallest illumination angle outward (bright field first)."""
    with torch.no_grad():
        return torch.argsort(model.frame_illumination_na())


# The margin of the modelled field (`OpticalSetup.margin`), in resolution lengths wavelength / NA: the reach
# of the blur that carries light from outside the camera's crop into its border (a defocus of ~2.5 rad RMS
# blurs by ~2.7 of them, and the hard pupil's ringing reaches further).
MARGIN_RESOLUTIONS = 3.0


def _smooth_length(n: int) -> bool:
    """Whether n has no prime factor above 5 (the FFT's fast lengths)."""
    for p in (2, 3, 5):
        while n % p == 0:
            n //= p
    return n == 1


def field_margin(meta, frame_shape: tuple[int, int], margin_px: int | None = None) -> tuple[int, int]:
    """(rows, cols) margin of the modelled field beyond each frame edge, in camera pixels.

    `margin_px` None: `MARGIN_RESOLUTIONS` resolution lengths (wavelength / NA) on the sample, at most a
    quarter of the frame, grown by a pixel or two so the modelled side is a fast FFT length; otherwise
    exactly `margin_px` (0: the frame alone, periodic)."""
    if margin_px is not None:
        return int(margin_px), int(margin_px)
    sample_pixel_um = float(meta.camera_pixel_um) / float(meta.magnification)
    target = int(np.ceil(MARGIN_RESOLUTIONS * float(meta.wavelength_um) / (float(meta.objective_na) * sample_pixel_um)))
    margins = []
    for n in frame_shape:
        margin = min(target, int(n) // 4)
        while not _smooth_length(int(n) + 2 * margin):
            margin += 1
        margins.append(margin)
    return margins[0], margins[1]


def upsampled_amplitude(
    frame: torch.Tensor, scale: float, object_shape: tuple[int, int], margin: tuple[int, int] = (0, 0)
) -> torch.Tensor:
    """sqrt(frame / scale) interpolated to the object grid: the start object of both engines (complex64).
    With a margin (`OpticalSetup.margin`) the frame is first extended by it, mirrored at its edges."""
    amplitude = torch.sqrt(frame / scale)[None, None]
    if margin[0] or margin[1]:
        top, left = min(margin[0], frame.shape[0] - 1), min(margin[1], frame.shape[1] - 1)
        amplitude = torch.nn.functional.pad(amplitude, (left, left, top, top), mode="reflect")
        amplitude = torch.nn.functional.pad(
            amplitude, (margin[1] - left,) * 2 + (margin[0] - top,) * 2, mode="replicate"
        )
    amplitude = torch.nn.functional.interpolate(amplitude, size=object_shape, mode="bilinear")[0, 0]
    return amplitude.to(torch.complex64)


def initial_spectrum(model: ForwardModel, measurements: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Object spectrum of the upsampled sqrt of the most on-axis frame, and its intensity scale.

    Returns the spectrum normalised to unit mean amplitude and the frame's mean intensity,
    which is the gain that maps |object|^2 = 1 to the measured counts.
    """
    frame = measurements[int(illumination_order(model)[0])]
    scale = max(float(frame.mean()), 1e-12)
    return spectrum_of(upsampled_amplitude(frame, scale, model.setup.object_shape, model.setup.margin)), scale


def amplitude_misfit_terms(predicted_amplitude: torch.Tensor, measured_amplitude: torch.Tensor) -> tuple[float, float]:
    """Sum of squared amplitude residuals and of measured intensity: their ratio is the data misfit.

    The relative amplitude misfit sum (sqrt(I_model) - sqrt(I_measured))^2 / sum I_measured is how both
    engines report how well their own model explains the frames (lower is better).
    """
    residual = float((predicted_amplitude - measured_amplitude).square().sum())
    return residual, float(measured_amplitude.square().sum())


@dataclass
class ReconstructionResult:
    """Engine-independent outcome of a reconstruction."""

    object_field: np.ndarray  # complex64 (sH, sW)
    pupil: np.ndarray  # complex64 (H, W)
    geometry: LedGeometry
    zernike_rad: dict[int, float]
    frame_gain: np.ndarray  # (N,)
    led_positions_mm: np.ndarray  # (N, 2)
    object_pixel_um: float
    method: str
    iterations: int
    elapsed_s: float
    loss_history: list[float] = field(default_factory=list)
    source_dataset: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def final_loss(self) -> float:
        return float(self.loss_history[-1]) if self.loss_history else float("nan")

    def calibration(self) -> Calibration:
        return Calibration(
            led_geometry=self.geometry,
            zernike_rad={int(j): float(v) for j, v in self.zernike_rad.items()},
            frame_gain=tuple(float(g) for g in self.frame_gain),
            led_positions_mm=tuple((float(x), float(y)) for x, y in self.led_positions_mm),
            object_pixel_um=float(self.object_pixel_um),
            final_loss=self.final_loss if np.isfinite(self.final_loss) else None,
            iterations=int(self.iterations),
            elapsed_s=float(self.elapsed_s),
            source_dataset=self.source_dataset,
            software=f"uafp_gui {__version__}",
            # an iteration rolled back for a non-finite loss is recorded as null (JSON has no inf)
            extra={
                "method": self.method,
                "loss_history": [float(v) if np.isfinite(v) else None for v in self.loss_history],
            }
            | self.extra,
        )


def result_from_model(
    model: ForwardModel,
    spectrum: torch.Tensor,
    method: str,
    iterations: int,
    started: float,
    loss_history: list[float],
    source_dataset: str,
    pupil: torch.Tensor | None = None,
) -> ReconstructionResult:
    with torch.no_grad():
        obj = object_of(spectrum)[model.setup.object_window()].cpu().numpy().astype(np.complex64)
        pupil_array = (model.frame_pupil() if pupil is None else pupil).cpu().numpy().astype(np.complex64)
        positions = model.frame_led_positions_mm().cpu().numpy()
        gains = model.system.frame_gain.detach().cpu().numpy()
    return ReconstructionResult(
        object_field=obj,
        pupil=pupil_array,
        geometry=model.system.led_geometry(),
        zernike_rad=model.system.zernike_dict(),
        frame_gain=gains,
        led_positions_mm=positions,
        object_pixel_um=model.setup.object_pixel_um,
        method=method,
        iterations=iterations,
        elapsed_s=time.perf_counter() - started,
        loss_history=list(loss_history),
        source_dataset=source_dataset,
    )


def save_result(result: ReconstructionResult, folder: str | Path, *, report_dataset: Any = None,
                report: bool = False) -> Path:
    """Write the result folder of spec section 3, atomically (all files, or none); with
    `report=True` report.png is drawn into the same folder before it is moved into place."""
    extra_files = None
    if report:
        def draw_report(path: Path) -> None:
            from uafp_gui.recon.report import write_report

            write_report(result, path, dataset=report_dataset)

        extra_files = {"report.png": draw_report}
    return write_result(
        folder,
        amplitude=np.abs(result.object_field).astype(np.float32),
        phase=np.angle(result.object_field).astype(np.float32),
        pupil_amplitude=np.abs(result.pupil).astype(np.float32),
        pupil_phase=np.angle(result.pupil).astype(np.float32),
        calibration=result.calibration(),
        extra_files=extra_files,
    )
