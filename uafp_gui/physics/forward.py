"""The differentiable forward model of an LED-array FP microscope (spec section 2).

One torch module maps a complex high-resolution object spectrum and the system parameters
(LED geometry, pupil aberrations, frame gains, background) to the expected camera frames,
batched over frames and on any device. Illumination shifts are never rounded: the object
spectrum is cropped at the integer part of the shift and the pupil is evaluated at the
fractional remainder, which gives exactly the intensity of the continuous model and lets
gradients reach the geometry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as functional

from uafp_gui.model import LedGeometry, led_positions_mm
from uafp_gui.physics.geometry import illumination_frequencies
from uafp_gui.physics.zernike import MAX_NOLL_INDEX, zernike_basis

LedList = tuple[tuple[float, float], ...]
# Memory for the per-entry pupils kept while the system is a constant (`ForwardModel._kept_pupils`).
KEPT_PUPILS_BYTES = 256 * 2**20
# Camera fields per chunk of entries on a CPU (`ForwardModel._entries_per_chunk`): a chunk's chain of products
# and FFTs stays in the cache.
CAMERA_CHUNK_BYTES = 4 * 2**20
# Width of the pupil edge the unscattered wave passes, in spectrum pixels (`ForwardModel.dc_edge_px`): nearly
# hard (a point LED's plane wave is passed or blocked), but continuous, so the geometry keeps a gradient.
DC_EDGE_PX = 0.1


@dataclass(frozen=True)
class OpticalSetup:
    """What is known about the microscope and the acquisition: fixed during reconstruction."""

    wavelength_um: float
    objective_na: float
    sample_pixel_um: float
    frame_shape: tuple[int, int]
    frame_leds: tuple[LedList, ...]
    led_pitch_mm: float
    led_on_axis: tuple[float, float]
    led_height_mm: float
    upsample: int = 4
    tile_center_um: tuple[float, float] = (0.0, 0.0)
    glass_thickness_mm: float = 0.0
    glass_index: float = 1.0
    pixel_integration: int = 1
    # Per-frame illumination NA [na_x, na_y] from a calibrated dataset (frames' optional
    # `illumination_na`, see `ForwardModel.apply_frame_illumination_na`); None when not given.
    frame_illumination_na: tuple[tuple[float, float] | None, ...] | None = None
    # The modelled field extends this many camera pixels beyond each edge of the frame (rows, cols): a
    # camera sees a crop of a larger sample, and the blur of the pupil carries light from outside the
    # crop into its border. The model images the extended field and keeps the frame's pixels, so the
    # periodic FFT grid wraps only across the margin, never the frame's opposite edge into the frame.
    margin: tuple[int, int] = (0, 0)

    @classmethod
    def from_meta(
        cls, meta, frame_shape: tuple[int, int], upsample: int = 4, pixel_integration: int = 1,
        margin: tuple[int, int] = (0, 0),
    ) -> OpticalSetup:
        """Build from a `uafp_gui.io.schema.DatasetMeta` and the (rows, cols) of its frames."""
        glass = getattr(meta, "glass", None)
        return cls(
            wavelength_um=float(meta.wavelength_um),
            objective_na=float(meta.objective_na),
            sample_pixel_um=float(meta.camera_pixel_um) / float(meta.magnification),
            frame_shape=(int(frame_shape[0]), int(frame_shape[1])),
            frame_leds=tuple(tuple(tuple(led) for led in f.leds) for f in meta.frames),
            led_pitch_mm=float(meta.led_pitch_mm),
            led_on_axis=tuple(float(v) for v in meta.led_on_axis),
            led_height_mm=float(meta.led_height_mm),
            upsample=int(upsample),
            tile_center_um=tuple(float(v) for v in meta.tile_center_um),
            glass_thickness_mm=float(glass.thickness_mm) if glass else 0.0,
            glass_index=float(glass.refractive_index) if glass else 1.0,
            pixel_integration=int(pixel_integration),
            frame_illumination_na=frame_illumination_na_of(meta),
            margin=(int(margin[0]), int(margin[1])),
        )

    @property
    def n_frames(self) -> int:
        return len(self.frame_leds)

    @property
    def model_shape(self) -> tuple[int, int]:
        """(rows, cols) of the modelled field in camera pixels: the frame plus its margin on every side."""
        return (self.frame_shape[0] + 2 * self.margin[0], self.frame_shape[1] + 2 * self.margin[1])

    @property
    def object_shape(self) -> tuple[int, int]:
        rows, cols = self.model_shape
        return (rows * self.upsample, cols * self.upsample)

    def object_window(self) -> tuple[slice, slice]:
        """Where the camera frame's field of view lies on the object grid."""
        (top, left), (rows, cols), q = self.margin, self.frame_shape, self.upsample
        return slice(top * q, (top + rows) * q), slice(left * q, (left + cols) * q)

    @property
    def object_pixel_um(self) -> float:
        return self.sample_pixel_um / self.upsample

    @property
    def frequency_step(self) -> tuple[float, float]:
        """(df_y, df_x) spectrum spacing in cycles/um, shared by the modelled field and the object."""
        rows, cols = self.model_shape
        return (1.0 / (rows * self.sample_pixel_um), 1.0 / (cols * self.sample_pixel_um))

    @property
    def frame_frequency_step(self) -> tuple[float, float]:
        """(df_y, df_x) spectrum spacing of the camera frames themselves, cycles/um (their FFT's)."""
        rows, cols = self.frame_shape
        return (1.0 / (rows * self.sample_pixel_um), 1.0 / (cols * self.sample_pixel_um))

    @property
    def pupil_cutoff(self) -> float:
        """Pupil radius NA / wavelength in cycles/um."""
        return self.objective_na / self.wavelength_um


def frame_illumination_na_of(meta) -> tuple[tuple[float, float] | None, ...] | None:
    """Each frame's optional `illumination_na` [na_x, na_y] (None for frames without one); None
    when no frame has one. The NA vector points from the tile centre towards the frame's LED (an
    LED at +X gives +na_x), as calibrated per-LED NAs are published; the spec's illumination
    frequency is then u = -na / wavelength."""
    values = []
    for k, frame in enumerate(meta.frames):
        na = getattr(frame, "extra", {}).get("illumination_na")
        if na is None:
            values.append(None)
            continue
        try:
            na_x, na_y = (float(v) for v in na)
        except (TypeError, ValueError):
            raise ValueError(f"frames[{k}].illumination_na must be [na_x, na_y] (got {na!r})") from None
        if not na_x * na_x + na_y * na_y < 1:
            raise ValueError(f"frames[{k}].illumination_na {na!r} has length >= 1: it is the sine of an angle")
        values.append((na_x, na_y))
    return tuple(values) if any(v is not None for v in values) else None


def spectrum_of(obj: torch.Tensor) -> torch.Tensor:
    """Centred spectrum of a complex object (the DC term at index n // 2)."""
    return torch.fft.fftshift(torch.fft.fft2(obj), dim=(-2, -1))


def object_of(spectrum: torch.Tensor) -> torch.Tensor:
    """Inverse of `spectrum_of`."""
    return torch.fft.ifft2(torch.fft.ifftshift(spectrum, dim=(-2, -1)))


def centred_frequencies(n: int, step: float) -> torch.Tensor:
    return (torch.arange(n, dtype=torch.float64) - n // 2) * step


class SystemParameters(torch.nn.Module):
    """The uncertain part of the microscope: what UA-FP estimates and calibration reports."""

    def __init__(self, setup: OpticalSetup, distinct_leds: int):
        super().__init__()
        rows, cols = setup.model_shape  # the pupil maps live on the modelled field's spectrum grid
        self.shift_x_mm = torch.nn.Parameter(torch.zeros(()))
        self.shift_y_mm = torch.nn.Parameter(torch.zeros(()))
        self.rotation_deg = torch.nn.Parameter(torch.zeros(()))
        self.height_mm = torch.nn.Parameter(torch.tensor(float(setup.led_height_mm)))
        # Index j - 1 holds Noll Z_j; piston (j = 1) is never used.
        self.zernike_rad = torch.nn.Parameter(torch.zeros(MAX_NOLL_INDEX))
        self.freeform_phase = torch.nn.Parameter(torch.zeros(rows, cols))
        self.log_pupil_amplitude = torch.nn.Parameter(torch.zeros(rows, cols))
        self.frame_gain = torch.nn.Parameter(torch.ones(setup.n_frames))
        self.led_offsets_mm = torch.nn.Parameter(torch.zeros(distinct_leds, 2))
        self.background = torch.nn.Parameter(torch.zeros(()))

    def led_geometry(self) -> LedGeometry:
        values = [float(p.detach()) for p in (self.shift_x_mm, self.shift_y_mm, self.rotation_deg, self.height_mm)]
        return LedGeometry(*values)

    def set_geometry(self, geometry: LedGeometry) -> None:
        with torch.no_grad():
            self.shift_x_mm.fill_(geometry.shift_x_mm)
            self.shift_y_mm.fill_(geometry.shift_y_mm)
            self.rotation_deg.fill_(geometry.rotation_deg)
            self.height_mm.fill_(geometry.height_mm)

    def zernike_dict(self, first: int = 2) -> dict[int, float]:
        values = self.zernike_rad.detach().cpu().tolist()
        return {j: float(values[j - 1]) for j in range(first, MAX_NOLL_INDEX + 1)}

    def set_zernike(self, coefficients: dict[int, float]) -> None:
        with torch.no_grad():
            self.zernike_rad.zero_()
            for j, value in coefficients.items():
                if not 1 <= int(j) <= MAX_NOLL_INDEX:
                    raise ValueError(f"Zernike index {j} outside 1..{MAX_NOLL_INDEX}")
                self.zernike_rad[int(j) - 1] = float(value)


class ForwardModel(torch.nn.Module):
    """Expected frames I_k = gain_k * sum_leds |F^-1{P(f) O(f - u)}|^2 (+ background)."""

    def __init__(self, setup: OpticalSetup, device: torch.device | str = "cpu"):
        super().__init__()
        self.setup = setup
        rows, cols = setup.model_shape
        df_y, df_x = setup.frequency_step
        self.frequency_step_px = min(df_y, df_x)

        entries = [(k, led) for k, leds in enumerate(setup.frame_leds) for led in leds]
        if not entries:
            raise ValueError("the acquisition lights no LED in any frame")
        distinct = sorted({tuple(led) for _, led in entries})
        led_index = {led: i for i, led in enumerate(distinct)}
        self.distinct_leds = distinct
        self.register_buffer("entry_frame", torch.tensor([k for k, _ in entries]))
        self.register_buffer("entry_led", torch.tensor([led_index[tuple(led)] for _, led in entries]))
        self.register_buffer("distinct_row_col", torch.tensor(distinct, dtype=torch.float32).reshape(-1, 2))
        self.system = SystemParameters(setup, len(distinct))

        fy = centred_frequencies(rows, df_y)
        fx = centred_frequencies(cols, df_x)
        grid_y, grid_x = torch.meshgrid(fy, fx, indexing="ij")
        self.register_buffer("grid_fx", grid_x.float())
        self.register_buffer("grid_fy", grid_y.float())
        rho = torch.sqrt(grid_x**2 + grid_y**2) / setup.pupil_cutoff
        phi = torch.atan2(grid_y, grid_x)
        basis = zernike_basis(range(1, MAX_NOLL_INDEX + 1), rho, phi).float()
        self.register_buffer("zernike_basis", basis)
        self.register_buffer("support", self._soft_support(grid_x.float(), grid_y.float()))
        # Width (spectrum pixels) of the pupil edge the unscattered wave sees (`_sharp_zero_frequency`);
        # 1.0: the same one-pixel ramp as the rest of the spectrum.
        self._dc_edge_px = DC_EDGE_PX
        # Normalised sampling grid for grid_sample, align_corners=True.
        norm_y = torch.linspace(-1, 1, rows)
        norm_x = torch.linspace(-1, 1, cols)
        ny, nx = torch.meshgrid(norm_y, norm_x, indexing="ij")
        self.register_buffer("sample_grid", torch.stack([nx, ny], dim=-1))
        if setup.frame_illumination_na is not None:
            self.apply_frame_illumination_na()
        self.to(device)

    def apply_frame_illumination_na(self) -> None:
        """Place the LEDs of frames that carry a calibrated illumination NA exactly there.

        The rigid grid stays the nominal model; each such LED's residual (`led_offsets_mm`) is set
        so that, at the nominal height and geometry, it lights the tile centre under exactly that
        NA (refracted by the glass when there is one). Geometry learning then refines the whole
        set rigidly; without it the NAs are used frozen. One LED per frame; an LED lit in two
        frames must carry the same NA in both.
        """
        setup = self.setup
        nominal = led_positions_mm(self.distinct_row_col, setup.led_on_axis, setup.led_pitch_mm)
        target: dict[int, tuple[float, float]] = {}
        for frame, led in zip(self.entry_frame.tolist(), self.entry_led.tolist(), strict=True):
            na = setup.frame_illumination_na[frame]
            if na is None:
                continue
            if len(setup.frame_leds[frame]) != 1:
                raise ValueError(f"frame {frame} lights several LEDs: illumination_na is for single-LED frames only")
            sine = math.hypot(*na)
            height, glass = setup.led_height_mm, setup.glass_thickness_mm
            rho = (height - glass) * sine / math.sqrt(1 - sine * sine)
            if glass > 0:
                inner = sine / setup.glass_index
                rho += glass * inner / math.sqrt(1 - inner * inner)
            direction = (na[0] / sine, na[1] / sine) if sine > 0 else (0.0, 0.0)
            position = (
                setup.tile_center_um[0] / 1000.0 + rho * direction[0],
                setup.tile_center_um[1] / 1000.0 + rho * direction[1],
            )
            previous = target.setdefault(led, position)
            if math.dist(previous, position) > 1e-6 * max(1.0, height):
                row, col = self.distinct_leds[led]
                raise ValueError(
                    f"LED [{row}, {col}] is lit in several frames with different illumination_na (frame {frame}): "
                    "give each calibrated illumination its own LED index"
                )
        with torch.no_grad():
            for led, position in target.items():
                self.system.led_offsets_mm[led] = torch.tensor(position) - nominal[led]

    # ----------------------------------------------------------------- geometry
    @property
    def device(self) -> torch.device:
        return self.grid_fx.device

    def distinct_led_positions_mm(self) -> torch.Tensor:
        """(L, 2) actual [X', Y'] of every distinct LED used, rigid model plus residuals."""
        s = self.system
        moved = led_positions_mm(
            self.distinct_row_col, self.setup.led_on_axis, self.setup.led_pitch_mm,
            shift_x_mm=s.shift_x_mm, shift_y_mm=s.shift_y_mm, rotation_deg=s.rotation_deg,
        )
        return moved + s.led_offsets_mm

    def illumination_frequencies(self) -> torch.Tensor:
        """(L, 2) (u_x, u_y) cycles/um of every distinct LED.

        Kept while the geometry does not change and no gradient is wanted (every mini-batch of the
        object phase, every object perturbation of the error bars): through a glass slide each call
        is a few dozen tiny Newton-step operations, a fixed cost per batch."""
        setup = self.setup
        s = self.system
        inputs = (s.shift_x_mm, s.shift_y_mm, s.rotation_deg, s.height_mm, s.led_offsets_mm)
        constant = not (torch.is_grad_enabled() and any(p.requires_grad for p in inputs))
        cached = self.__dict__.get("_frequency_cache")
        if constant and cached is not None and all(
            a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)
            for a, b in zip(cached[0], inputs, strict=True)
        ):
            return cached[1]
        tile_mm = (setup.tile_center_um[0] / 1000.0, setup.tile_center_um[1] / 1000.0)
        frequencies = illumination_frequencies(
            self.distinct_led_positions_mm(),
            self.system.height_mm,
            setup.wavelength_um,
            tile_mm,
            setup.glass_thickness_mm,
            setup.glass_index,
        )
        if constant:
            frequencies = frequencies.detach()
            self._frequency_cache = (tuple(p.detach().clone() for p in inputs), frequencies)
        return frequencies

    def frame_illumination_na(self) -> torch.Tensor:
        """(N,) largest illumination NA (sine of the angle) among each frame's lit LEDs."""
        na = self.illumination_frequencies().norm(dim=-1)[self.entry_led] * self.setup.wavelength_um
        return torch.zeros(self.setup.n_frames, device=na.device, dtype=na.dtype).scatter_reduce_(
            0, self.entry_frame, na, "amax", include_self=False
        )

    def frame_led_positions_mm(self) -> torch.Tensor:
        """(N, 2) LED position per frame (centroid of the lit LEDs), dataset order."""
        positions = self.distinct_led_positions_mm()[self.entry_led]
        n = self.setup.n_frames
        total = torch.zeros(n, 2, device=positions.device).index_add_(0, self.entry_frame, positions)
        count = torch.zeros(n, device=positions.device).index_add_(
            0, self.entry_frame, torch.ones_like(positions[:, 0])
        )
        return total / count.clamp(min=1)[:, None]

    # -------------------------------------------------------------------- pupil
    def _soft_support(self, fx: torch.Tensor, fy: torch.Tensor) -> torch.Tensor:
        """Anti-aliased pupil support: the fraction of each spectrum pixel inside the NA."""
        return self._edge_ramp(torch.sqrt(fx**2 + fy**2), self.frequency_step_px)

    def _edge_ramp(self, radius: torch.Tensor, width: float) -> torch.Tensor:
        """The pupil's transmission at |f| = `radius`: a linear ramp `width` cycles/um wide centred on the NA."""
        return ((self.setup.pupil_cutoff - radius) / width + 0.5).clamp(0, 1)

    @property
    def dc_edge_px(self) -> float:
        return self._dc_edge_px

    @dc_edge_px.setter
    def dc_edge_px(self, width: float) -> None:
        if float(width) != self._dc_edge_px:
            self._dc_edge_px = float(width)
            self.__dict__.pop("_pupil_cache", None)  # the kept pupils were made with the old edge

    def _sharp_zero_frequency(
        self, support: torch.Tensor, fx: torch.Tensor, fy: torch.Tensor, whole: torch.Tensor
    ) -> torch.Tensor:
        """`support` with each entry's zero-frequency pixel passed through an edge `dc_edge_px` pixels wide.

        The one-pixel ramp of `_soft_support` is the right model for a continuous spectrum (the fraction of
        each pixel's cell inside the pupil), but the unscattered wave is one plane wave at exactly the
        illumination frequency u: a real pupil passes it or not (a point LED), or passes the fraction of
        the LED's angular extent inside it. Through the ramp, an LED within half a pixel of the NA passed
        part of its bright background, and the engine moved the LED geometry to make it fit."""
        rows, cols = self.setup.model_shape
        centre_y, centre_x = rows // 2 + whole[:, 0], cols // 2 + whole[:, 1]
        inside = (centre_y >= 0) & (centre_y < rows) & (centre_x >= 0) & (centre_x < cols)
        # Every entry at a clamped pixel, those whose zero frequency is outside the crop keeping their
        # value: no data-dependent selection, so no host synchronisation on a GPU.
        entries = torch.arange(whole.shape[0], device=whole.device)
        centre_y, centre_x = centre_y.clamp(0, rows - 1), centre_x.clamp(0, cols - 1)
        radius = torch.sqrt(fx[entries, centre_y, centre_x] ** 2 + fy[entries, centre_y, centre_x] ** 2)
        passed = self._edge_ramp(radius, max(self.dc_edge_px, 1e-6) * self.frequency_step_px).to(support.dtype)
        passed = torch.where(inside, passed, support[entries, centre_y, centre_x])
        return support.index_put((entries, centre_y, centre_x), passed)

    def pupil_phase(self) -> torch.Tensor:
        """(H, W) pupil phase W(f) on the frame spectrum grid: Zernikes plus free-form."""
        s = self.system
        zernike = torch.einsum("j,jhw->hw", s.zernike_rad[1:], self.zernike_basis[1:])
        return zernike + s.freeform_phase

    def pupil_amplitude(self) -> torch.Tensor:
        return self.support * torch.exp(self.system.log_pupil_amplitude)

    def pupil(self) -> torch.Tensor:
        """(H, W) complex pupil A(f) exp(i W(f)) on the unshifted grid."""
        return torch.polar(self.pupil_amplitude(), self.pupil_phase())

    def frame_pupil(self) -> torch.Tensor:
        """(H, W) complex pupil on the camera frame's own spectrum grid (`OpticalSetup.frame_frequency_step`):
        what a result reports. Equal to `pupil()` without a margin; with one, the Zernikes are evaluated on
        the frame's grid and the per-pixel maps interpolated from the modelled field's finer grid."""
        setup = self.setup
        if setup.margin == (0, 0):
            return self.pupil()
        (rows, cols), (model_rows, model_cols) = setup.frame_shape, setup.model_shape
        (df_y, df_x), (model_df_y, model_df_x) = setup.frame_frequency_step, setup.frequency_step
        fy = centred_frequencies(rows, df_y).to(self.device)
        fx = centred_frequencies(cols, df_x).to(self.device)
        grid_y, grid_x = torch.meshgrid(fy, fx, indexing="ij")
        rho = torch.sqrt(grid_x**2 + grid_y**2) / setup.pupil_cutoff
        basis = zernike_basis(range(2, MAX_NOLL_INDEX + 1), rho, torch.atan2(grid_y, grid_x)).to(self.grid_fx.dtype)
        # The model grid's sample i sits at (i - n // 2) df: grid_sample's normalised coordinate of frequency f.
        normalised = torch.stack(
            [
                (grid_x / model_df_x + model_cols // 2) * 2 / max(model_cols - 1, 1) - 1,
                (grid_y / model_df_y + model_rows // 2) * 2 / max(model_rows - 1, 1) - 1,
            ],
            dim=-1,
        ).to(self.grid_fx.dtype)
        maps = torch.stack([self.system.freeform_phase, self.system.log_pupil_amplitude])
        sampled = functional.grid_sample(maps[None], normalised[None], mode="bilinear", padding_mode="border",
                                         align_corners=True)[0]
        phase = torch.einsum("j,jhw->hw", self.system.zernike_rad[1:], basis) + sampled[0]
        support = self._edge_ramp(rho * setup.pupil_cutoff, min(df_y, df_x))
        return torch.polar(support.to(phase.dtype) * torch.exp(sampled[1]), phase)

    def shifted_pupils(self, offset: torch.Tensor, whole: torch.Tensor | None = None) -> torch.Tensor:
        """(E, H, W) complex pupils evaluated at f + offset, offset (E, 2) (u_x, u_y) cycles/um.

        The support is analytic; phase and amplitude maps are interpolated bilinearly, which
        is accurate to a few 1e-3 rad for the aberrations of a cheap objective.

        `whole` (E, 2) [row, col]: the entries' integer spectrum offsets (`crop_plan`). Given, the pixel
        where the object's zero frequency lands (the unscattered wave, at exactly the illumination
        frequency) gets the sharper edge `dc_edge_px` instead of the one-pixel anti-aliasing ramp.
        """
        fx = self.grid_fx[None] + offset[:, 0, None, None]
        fy = self.grid_fy[None] + offset[:, 1, None, None]
        support = self._soft_support(fx, fy)
        if whole is not None and self.dc_edge_px != 1.0:
            support = self._sharp_zero_frequency(support, fx, fy, whole)
        sampled = self.sampled_maps(torch.stack([self.pupil_phase(), self.system.log_pupil_amplitude]), offset)
        amplitude = support * torch.exp(sampled[:, 1])
        return torch.polar(amplitude, sampled[:, 0])

    def sampled_maps(self, maps: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        """(E, C, H, W): the (C, H, W) maps on the frame spectrum grid interpolated (bilinearly,
        border-padded) at f + offset, offset (E, 2) (u_x, u_y) cycles/um, as `shifted_pupils` does."""
        rows, cols = self.setup.model_shape
        df_y, df_x = self.setup.frequency_step
        grid_shift = torch.stack(
            [offset[:, 0] / df_x * 2 / max(cols - 1, 1), offset[:, 1] / df_y * 2 / max(rows - 1, 1)],
            dim=-1,
        )
        grid = self.sample_grid[None] + grid_shift[:, None, None, :]
        return functional.grid_sample(
            maps[None].expand(offset.shape[0], -1, -1, -1),
            grid,
            mode="bilinear",
            padding_mode="border",
            align_corners=True,
        )

    # ------------------------------------------------------------------ imaging
    def crop_plan(self, frequencies: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Integer spectrum offsets (E, 2) [row, col] px, and fractional remainders (E, 2) cycles/um."""
        df_y, df_x = self.setup.frequency_step
        step = torch.tensor([df_x, df_y], device=frequencies.device, dtype=frequencies.dtype)
        whole = torch.round(frequencies.detach() / step)
        remainder = frequencies - whole * step
        return whole[:, 1].long(), whole[:, 0].long(), remainder

    def crop_indices(self, whole_y: torch.Tensor, whole_x: torch.Tensor):
        rows, cols = self.setup.model_shape
        big_rows, big_cols = self.setup.object_shape
        local_y = torch.arange(rows, device=whole_y.device) - rows // 2
        local_x = torch.arange(cols, device=whole_x.device) - cols // 2
        index_y = big_rows // 2 + local_y[None, :] - whole_y[:, None]
        index_x = big_cols // 2 + local_x[None, :] - whole_x[:, None]
        if index_y.min() < 0 or index_y.max() >= big_rows or index_x.min() < 0 or index_x.max() >= big_cols:
            raise ValueError(
                "an LED illuminates beyond the reconstructed bandwidth: increase the upsample "
                f"factor (now {self.setup.upsample}) or use fewer outer LEDs"
            )
        return index_y, index_x

    def fits_bandwidth(self) -> bool:
        """Every LED's illumination, at the current geometry, within the reconstructed bandwidth (what
        `crop_indices` needs): False where a candidate geometry would push an outer LED beyond it."""
        with torch.no_grad():
            try:
                self.crop_indices(*self.crop_plan(self.illumination_frequencies())[:2])
            except ValueError:
                return False
        return True

    def entries_for(self, frames: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Entries (one per lit LED) of the given frames, and each entry's position in the batch."""
        if frames is None:
            entries = torch.arange(self.entry_frame.numel(), device=self.device)
            return entries, self.entry_frame
        frames = frames.to(self.device)
        lookup = torch.full((self.setup.n_frames,), -1, dtype=torch.long, device=self.device)
        lookup[frames] = torch.arange(frames.numel(), device=self.device)
        batch_position = lookup[self.entry_frame]
        entries = torch.nonzero(batch_position >= 0).squeeze(1)
        return entries, batch_position[entries]

    def field_spectra(self, object_spectrum: torch.Tensor, entries: torch.Tensor) -> torch.Tensor:
        """(E, H, W) centred spectra of the low-resolution fields, one per entry."""
        kept = self._kept_pupils(entries)
        if kept is not None:
            index_y, index_x, pupils = kept
        else:
            frequencies = self.illumination_frequencies()[self.entry_led[entries]]
            whole_y, whole_x, remainder = self.crop_plan(frequencies)
            index_y, index_x = self.crop_indices(whole_y, whole_x)
            pupils = self.shifted_pupils(remainder, torch.stack([whole_y, whole_x], dim=1))
        crops = object_spectrum[index_y[:, :, None], index_x[:, None, :]]
        return crops * pupils

    def _kept_pupils(self, entries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """The entries' crop indices and shifted pupils, kept per entry while the system is a constant (no
        gradient wanted, parameters unchanged: every mini-batch of the object phase, the misfit of all
        frames), so each entry's pupil is interpolated once, not once per batch. None when the system
        takes a gradient, or when the kept pupils of all entries would exceed `KEPT_PUPILS_BYTES`."""
        s = self.system
        inputs = (s.shift_x_mm, s.shift_y_mm, s.rotation_deg, s.height_mm, s.led_offsets_mm, s.zernike_rad,
                  s.freeform_phase, s.log_pupil_amplitude)
        if torch.is_grad_enabled() and any(p.requires_grad for p in inputs):
            return None
        rows, cols = self.setup.model_shape
        n_entries = self.entry_frame.numel()
        complex_type = torch.complex64 if self.grid_fx.dtype == torch.float32 else torch.complex128
        if n_entries * rows * cols * complex_type.itemsize > KEPT_PUPILS_BYTES:
            return None
        kept = self.__dict__.get("_pupil_cache")
        if kept is None or not all(
            a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)
            for a, b in zip(kept[0], inputs, strict=True)
        ):
            kept = (
                tuple(p.detach().clone() for p in inputs),
                torch.zeros(n_entries, dtype=torch.bool, device=self.device),  # computed yet
                torch.empty(n_entries, rows, cols, dtype=complex_type, device=self.device),
                torch.empty(n_entries, rows, dtype=torch.long, device=self.device),
                torch.empty(n_entries, cols, dtype=torch.long, device=self.device),
            )
            self._pupil_cache = kept
        _, computed, pupils, index_y, index_x = kept
        entries = entries.to(self.device)
        missing = entries[~computed[entries]]
        if missing.numel():
            with torch.no_grad():
                frequencies = self.illumination_frequencies()[self.entry_led[missing]]
                whole_y, whole_x, remainder = self.crop_plan(frequencies)
                index_y[missing], index_x[missing] = self.crop_indices(whole_y, whole_x)
                pupils[missing] = self.shifted_pupils(remainder, torch.stack([whole_y, whole_x], dim=1))
                computed[missing] = True
        return index_y[entries], index_x[entries], pupils[entries]

    def intensity_of(self, spectra: torch.Tensor) -> torch.Tensor:
        """|field|^2 on the camera grid, integrated over each pixel when enabled.

        With pixel integration q > 1 the field is sampled q x q times per camera pixel (the spectrum
        zero-padded to q times the frame, the sub-samples centred on the pixel) and the intensity
        averaged over them. Computed by `_CameraIntensity` (the hot path of every iteration): each
        sub-sample grid is one frame-sized inverse FFT (`_camera_fields`), and its closed-form backward
        pass keeps only the fields.
        """
        return _CameraIntensity.apply(spectra, self._subsample_factors(), self._entries_per_chunk(spectra))

    def camera_fields(self, spectra: torch.Tensor) -> torch.Tensor:
        """(E, q, q, H, W) camera fields of centred field spectra, one (H, W) grid per sub-sample of the
        camera pixel (`_camera_fields`); `intensity_of` is the mean of their |.|^2 over the sub-samples."""
        return _camera_fields(spectra, self._subsample_factors())

    def intensity_and_fields(self, spectra: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`intensity_of(spectra)` (the same numbers, no autograd) and the camera fields behind it."""
        with torch.no_grad():
            return _intensity_and_fields(spectra, self._subsample_factors(), self._entries_per_chunk(spectra))

    def intensity_derivative(self, fields: torch.Tensor, spectra_derivative: torch.Tensor) -> torch.Tensor:
        """The directional derivative of `intensity_of` at the spectra whose camera fields are `fields`
        (`intensity_and_fields`) along `spectra_derivative`: pool(2 Re(conj(field) x its derivative)), in
        chunks of entries like `intensity_of`."""
        factors = self._subsample_factors()
        chunk = self._entries_per_chunk(spectra_derivative)
        derivative = fields.real.new_empty(spectra_derivative.shape)
        for first in range(0, len(spectra_derivative), chunk):
            part = slice(first, first + chunk)
            change = _camera_fields(spectra_derivative[part], factors)
            product = fields[part].real * change.real
            derivative[part] = _pooled(product.addcmul_(fields[part].imag, change.imag).mul_(2.0))
        return derivative

    def _entries_per_chunk(self, spectra: torch.Tensor) -> int:
        """Entries whose camera fields are computed together: on a CPU, as many as keep the fields of one
        chunk within `CAMERA_CHUNK_BYTES` (the chain of multiply, FFT and |.|^2 then runs in the cache: a
        45-frame batch's fields, 30-120 MB, took 1.5-5x longer in one piece); on a GPU, all of them."""
        if spectra.device.type != "cpu":
            return max(1, spectra.shape[0])
        q = self.setup.pixel_integration
        per_entry = q * q * spectra.shape[-2] * spectra.shape[-1] * spectra.element_size()
        return max(1, CAMERA_CHUNK_BYTES // per_entry)

    def _subsample_factors(self) -> torch.Tensor:
        """(q, q, H, W) complex factors applied to each centred field spectrum before the frame-sized
        inverse FFT of each of the camera pixel's q x q sub-samples (`_camera_fields`): the FFT scale of
        the object grid and the sub-sample's position, centred on the pixel."""
        rows, cols = self.setup.model_shape
        big_rows, big_cols = self.setup.object_shape
        q = self.setup.pixel_integration
        key = (q, self.device, self.grid_fx.dtype)
        cached = getattr(self, "_factor_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        complex_type = torch.complex64 if self.grid_fx.dtype == torch.float32 else torch.complex128
        # The frame-sized inverse FFT's 1 / (H W) is q^2 times the fine grid's 1 / (qH qW).
        scale = (rows * cols) / (big_rows * big_cols)
        df_y, df_x = self.setup.frequency_step
        # The frequencies of the frame's samples within the spectrum zero-padded to q times the frame.
        pad_y, pad_x = (q - 1) * rows, (q - 1) * cols
        fy = centred_frequencies(q * rows, df_y)[pad_y // 2 : pad_y // 2 + rows]
        fx = centred_frequencies(q * cols, df_x)[pad_x // 2 : pad_x // 2 + cols]
        # Sub-sample a of q sits (a - (q - 1) / 2) / q pixel from the pixel's centre: a phase ramp.
        offset_um = (torch.arange(q, dtype=torch.float64) - (q - 1) / 2) / q * self.setup.sample_pixel_um
        phase_y = 2 * torch.pi * offset_um[:, None] * fy[None, :]  # (q, H)
        phase_x = 2 * torch.pi * offset_um[:, None] * fx[None, :]  # (q, W)
        phase = phase_y[:, None, :, None] + phase_x[None, :, None, :]
        factors = torch.polar(torch.full_like(phase, scale), phase).to(device=self.device, dtype=complex_type)
        self._factor_cache = (key, factors)
        return factors

    def forward(self, object_spectrum: torch.Tensor, frames: torch.Tensor | None = None) -> torch.Tensor:
        """(B, H, W) expected normalised frames for `frames` (all when None)."""
        entries, batch_position = self.entries_for(frames)
        return self.frames_of(self.field_spectra(object_spectrum, entries), frames, batch_position)

    def frames_of(
        self, spectra: torch.Tensor, frames: torch.Tensor | None, batch_position: torch.Tensor
    ) -> torch.Tensor:
        """(B, H, W) expected frames from the field spectra of their entries (`field_spectra`):
        the tail of `forward`, for callers that build the spectra themselves (the error bars)."""
        frame_ids = torch.arange(self.setup.n_frames, device=self.device) if frames is None else frames.to(self.device)
        gain = self.system.frame_gain[frame_ids]
        summed = self.sum_entries(self.intensity_of(spectra), frames, batch_position)
        return gain[:, None, None] * summed + self.system.background

    def sum_entries(self, intensity: torch.Tensor, frames: torch.Tensor | None, batch_position: torch.Tensor):
        """(B, H, W): each frame's sum over its entries' (lit LEDs') intensities, on the camera frame (the
        margin of the modelled field cut off)."""
        (top, left), (rows, cols) = self.setup.margin, self.setup.frame_shape
        if top or left:
            intensity = intensity[:, top : top + rows, left : left + cols]
        n_batch = self.setup.n_frames if frames is None else frames.numel()
        if batch_position.numel() == n_batch and torch.equal(
            batch_position, torch.arange(n_batch, device=batch_position.device)
        ):
            frames_out = intensity  # one LED per frame, in order: the sum over entries is the identity
        else:
            frames_out = torch.zeros(n_batch, rows, cols, device=intensity.device, dtype=intensity.dtype)
            frames_out = frames_out.index_add(0, batch_position, intensity)
        return frames_out


def _camera_fields(spectra: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """(E, q, q, H, W) fields at the camera's q x q sub-samples of each pixel: for sub-sample (a, b) the
    frame-sized inverse FFT of the centred spectra times its factor (`ForwardModel._subsample_factors`).

    The same samples as one inverse FFT of the spectrum zero-padded to q times the frame (the field at
    fine-grid point (q m + a, q n + b)) for the same work and no padding: a band-limited field's q x q
    interleaved sub-grids are its frame-sized transforms with the sub-sample's shift as a phase ramp. The
    centred spectra are transformed as they are (no ifftshift): that multiplies every field by the same
    unit-modulus factor per pixel, which no intensity and no Re(conj(field) x change) sees."""
    return torch.fft.ifft2(spectra[:, None, None] * factors)


def _intensity_and_fields(
    spectra: torch.Tensor, factors: torch.Tensor, chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(E, H, W) camera intensities and the (E, q, q, H, W) fields behind them, `chunk` entries at a time."""
    q_rows, q_cols = factors.shape[:2]
    batch, rows, cols = spectra.shape
    fields = spectra.new_empty(batch, q_rows, q_cols, rows, cols)
    intensity = spectra.real.new_empty(batch, rows, cols)
    for first in range(0, batch, chunk):
        part = slice(first, first + chunk)
        field = torch.fft.ifft2(spectra[part, None, None] * factors, out=fields[part])
        intensity[part] = _pooled(field.real.square().addcmul_(field.imag, field.imag))
    return intensity, fields


def _pooled(values: torch.Tensor) -> torch.Tensor:
    """Pixel integration: the mean over each camera pixel's q x q sub-samples, (E, q, q, H, W) -> (E, H, W)."""
    q_rows, q_cols = values.shape[1:3]
    if q_rows * q_cols == 1:
        return values[:, 0, 0]
    return values.sum(dim=(1, 2)).mul_(1.0 / (q_rows * q_cols))


class _CameraIntensity(torch.autograd.Function):
    """I = mean over the sub-samples of |ifft2(S * factor_ab)|^2, with its adjoint written out (Wirtinger
    calculus), computed in chunks of entries (`ForwardModel._entries_per_chunk`).

    For a real loss L, torch's complex gradient is dL/d(conj z) x 2, so with g = dL/dI:
    grad_field_ab = 2 field_ab g / q^2, and grad_S = sum over ab of conj(factor_ab) fft2(grad_field_ab) / (H W)
    (the adjoint of ifft2).
    """

    @staticmethod
    def forward(ctx, spectra: torch.Tensor, factors: torch.Tensor, chunk: int) -> torch.Tensor:
        intensity, fields = _intensity_and_fields(spectra, factors, chunk)
        ctx.save_for_backward(fields, factors)
        ctx.chunk = chunk
        return intensity

    @staticmethod
    def backward(ctx, grad_intensity: torch.Tensor):
        if not ctx.needs_input_grad[0]:
            return None, None, None
        fields, factors = ctx.saved_tensors
        batch, q_rows, q_cols, rows, cols = fields.shape
        weight = grad_intensity * (2.0 / (q_rows * q_cols * rows * cols))
        grad_spectra = fields.new_empty(batch, rows, cols)
        conj_factors = factors.conj()
        for first in range(0, batch, ctx.chunk):
            part = slice(first, first + ctx.chunk)
            # The weight broadcast over the sub-samples on the real view (a complex-by-real product would
            # first turn the weights complex: twice the time).
            grad_fields = torch.view_as_real(fields[part]) * weight[part, None, None, :, :, None]
            grad_fields = torch.fft.fft2(torch.view_as_complex(grad_fields))
            torch.sum(grad_fields.mul_(conj_factors), dim=(1, 2), out=grad_spectra[part])
        return grad_spectra, None, None


def synthetic_aperture_cutoff(model: ForwardModel) -> float:
    """Largest recoverable spatial frequency: NA/wavelength + the largest |u|, cycles/um."""
    with torch.no_grad():
        largest = float(model.illumination_frequencies().norm(dim=-1).max())
    return model.setup.pupil_cutoff + largest


__all__ = [
    "ForwardModel",
    "OpticalSetup",
    "SystemParameters",
    "object_of",
    "spectrum_of",
    "synthetic_aperture_cutoff",
]
