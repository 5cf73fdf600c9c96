"""Classic FP: sequential EPRY object and pupil updates, the baseline UA-FP must beat.

Frames are visited from bright field outward (Ou et al., Opt. Express 2009 style): for each
frame the low-resolution field predicted from the current spectrum takes the measured
amplitude, and the difference updates the object spectrum and the pupil. The LED geometry
is the nominal one (or a loaded calibration) and is never refined; illumination shifts are
rounded to whole spectrum pixels, as in the published baseline. Single-LED frames only.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from uafp_gui.errors import ConfigError, ReconstructionError
from uafp_gui.io.calibration import Calibration
from uafp_gui.recon.choices import Device, parse_device
from uafp_gui.recon.common import (
    ReconstructionResult,
    amplitude_misfit_terms,
    apply_calibration,
    build_model,
    illumination_order,
    initial_spectrum,
    measurements_of,
    resolve_device,
    result_from_model,
)


@dataclass(frozen=True)
class ClassicSettings:
    upsample: int = 4
    iterations: int = 15
    object_step: float = 1.0
    pupil_step: float = 1.0
    update_pupil: bool = True
    device: Device = Device.AUTO
    mask_saturated: bool = True  # clipped pixels (at 2**bit_depth - 1) keep the model's amplitude

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ConfigError(f"--iterations must be >= 1 (got {self.iterations})")
        object.__setattr__(self, "device", parse_device(self.device))


@dataclass(frozen=True)
class ClassicProgress:
    iteration: int
    loss: float


class ClassicSolver:
    """EPRY on the project's forward-model conventions; `run()` or iterate `steps()`."""

    def __init__(self, dataset, settings: ClassicSettings = ClassicSettings(), calibration: Calibration | None = None):
        if any(len(frame.leds) != 1 for frame in dataset.meta.frames):
            raise ConfigError("classic FP needs one LED per frame; this dataset is multiplexed: use --method uafp")
        self.settings = settings
        self.dataset = dataset
        self.device = resolve_device(settings.device)
        self.model = build_model(dataset, settings.upsample, 1, self.device)
        apply_calibration(self.model, calibration)
        self.measured_amplitude = torch.sqrt(measurements_of(dataset, self.device))
        # Usable pixels of frames the camera clipped: there the update keeps the predicted amplitude.
        self.unsaturated: dict[int, torch.Tensor] = {}
        bit_depth = getattr(dataset.meta, "bit_depth", None)
        if settings.mask_saturated and bit_depth:
            for index, frame in enumerate(dataset.frames):
                clipped = np.asarray(frame) >= 2 ** int(bit_depth) - 1
                if clipped.any():
                    self.unsaturated[index] = torch.as_tensor(~clipped, device=self.device)
        self.spectrum, self.scale = initial_spectrum(self.model, self.measured_amplitude**2)
        self.loss_history: list[float] = []
        with torch.no_grad():
            self.pupil = self.model.pupil().to(torch.complex64)
            frequencies = self.model.illumination_frequencies()[self.model.entry_led]
            whole_y, whole_x, _ = self.model.crop_plan(frequencies)
            self.index_y, self.index_x = self.model.crop_indices(whole_y, whole_x)
        self.support = self.model.support > 0
        self.order = illumination_order(self.model).tolist()
        self.frame_of_entry = self.model.entry_frame.tolist()  # single-LED frames: entry k is one frame's
        rows, cols = self.model.setup.frame_shape
        big_rows, big_cols = self.model.setup.object_shape
        self.field_scale = (rows * cols) / (big_rows * big_cols)
        self.iterations_done = 0

    def _sweep(self) -> float:
        """One pass over every frame; returns the relative amplitude misfit seen on the way."""
        spectrum, pupil = self.spectrum, self.pupil
        misfit = 0.0
        total = 0.0
        for k in self.order:
            rows = self.index_y[k][:, None]
            cols = self.index_x[k][None, :]
            crop = spectrum[rows, cols]
            field_spectrum = crop * pupil
            field = torch.fft.ifft2(torch.fft.ifftshift(field_spectrum)) * self.field_scale
            measured = self.measured_amplitude[k] / np.sqrt(self.scale)
            amplitude = field.abs()
            usable = self.unsaturated.get(self.frame_of_entry[k])
            if usable is not None:  # clipped: only "at least this bright"; no update while the model is brighter
                measured = torch.where(usable, measured, torch.maximum(measured, amplitude))
            misfit += float(((amplitude - measured) ** 2).sum())
            total += float((measured**2).sum())
            corrected = measured * field / (amplitude + 1e-8)
            delta = torch.fft.fftshift(torch.fft.fft2(corrected)) / self.field_scale - field_spectrum
            # clamp: an all-zero crop or pupil must give no update, not 0/0 = NaN
            pupil_power = (pupil.abs() ** 2).max().clamp_min(1e-30)
            object_update = self.settings.object_step * pupil.conj() / pupil_power * delta
            if self.settings.update_pupil:
                crop_power = (crop.abs() ** 2).max().clamp_min(1e-30)
                pupil = pupil + self.settings.pupil_step * crop.conj() / crop_power * delta * self.support
            spectrum[rows, cols] = crop + object_update
        self.spectrum, self.pupil = spectrum, pupil
        return misfit / max(total, 1e-12)

    def steps(self) -> Iterator[ClassicProgress]:
        """One sweep per iteration; each reports the data misfit of the whole model after the sweep (the
        same figure as the summary's; the misfit seen frame by frame during a sweep is lower, since
        each frame is measured against a model just updated by its neighbours)."""
        with torch.no_grad():
            for _ in range(self.settings.iterations):
                loss = self._sweep()
                if math.isfinite(loss):
                    loss = self.data_misfit()
                if not math.isfinite(loss):
                    raise ReconstructionError(
                        f"classic FP diverged in iteration {self.iterations_done + 1} (the misfit is not "
                        "finite): check the frames for saturation or a wrong camera_offset"
                    )
                self.iterations_done += 1
                self.loss_history.append(loss)
                yield ClassicProgress(self.iterations_done, loss)

    def run(self, progress=None) -> ReconstructionResult:
        started = time.perf_counter()
        for update in self.steps():
            if progress is not None:
                progress(update)
        return self.result(started)

    def data_misfit(self) -> float:
        """Relative amplitude misfit of every frame under this solver's own model (no update)."""
        with torch.no_grad():
            residual = total = 0.0
            for k in range(self.index_y.shape[0]):
                crop = self.spectrum[self.index_y[k][:, None], self.index_x[k][None, :]]
                field = torch.fft.ifft2(torch.fft.ifftshift(crop * self.pupil)) * self.field_scale
                predicted = field.abs()
                measured = self.measured_amplitude[k] / np.sqrt(self.scale)
                usable = self.unsaturated.get(self.frame_of_entry[k])
                if usable is not None:
                    predicted, measured = predicted * usable, measured * usable
                terms = amplitude_misfit_terms(predicted, measured)
                residual, total = residual + terms[0], total + terms[1]
        return residual / max(total, 1e-30)

    def result(self, started: float) -> ReconstructionResult:
        with torch.no_grad():
            self.model.system.frame_gain.fill_(self.scale)
        misfit = self.data_misfit()
        result = result_from_model(
            self.model,
            self.spectrum,
            "classic",
            self.iterations_done,
            started,
            self.loss_history,
            str(self.dataset.path.name if self.dataset.path else ""),
            pupil=self.pupil,
        )
        result.extra = {"data_misfit": misfit}
        return result
