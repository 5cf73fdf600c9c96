"""`report.png`: one page that shows a reconstruction and the calibration it found.

Panels: amplitude, phase, pupil phase, Zernike bar chart, LED map (nominal vs estimated,
arrows magnified so millimetre errors show), loss curve. Matplotlib with the Agg backend, so
it works headless and never imports Qt.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from uafp_gui.model import led_positions_mm  # noqa: E402


def nominal_frame_positions_mm(meta) -> np.ndarray:
    """(N, 2) nominal [X, Y] per frame (centroid of its LEDs) from dataset metadata."""
    return np.asarray(
        [led_positions_mm(frame.leds, meta.led_on_axis, meta.led_pitch_mm).mean(axis=0) for frame in meta.frames]
    )


def readable_phase(phase: np.ndarray, wrap_fraction: float = 0.8) -> tuple[np.ndarray, float, float | None]:
    """(image, centre, spread): the phase re-centred on the circular mean of its central half, with the
    99.5th percentile of its deviation as `spread`; spread None when the deviations wrap (shown as is)."""
    rows, cols = phase.shape
    central = phase[rows // 4 : rows - rows // 4, cols // 4 : cols - cols // 4]
    centre = float(np.angle(np.mean(np.exp(1j * central))))
    deviation = np.angle(np.exp(1j * (phase - centre)))
    spread = float(np.percentile(np.abs(deviation), 99.5))
    if spread >= wrap_fraction * np.pi:
        return phase, centre, None
    return deviation, centre, max(spread, 1e-3)


def write_report(result, path: str | Path, dataset=None) -> Path:
    path = Path(path)
    figure, axes = plt.subplots(2, 3, figsize=(15, 9.5))
    amplitude = np.abs(result.object_field)
    phase = np.angle(result.object_field)
    extent_um = amplitude.shape[1] * result.object_pixel_um
    shown = axes[0, 0].imshow(amplitude, cmap="gray", extent=(0, extent_um, extent_um, 0))
    axes[0, 0].set_title("amplitude")
    axes[0, 0].set_xlabel("um")
    figure.colorbar(shown, ax=axes[0, 0], fraction=0.046)
    phase_shown, centre, spread = readable_phase(phase)
    if spread is None:  # wraps: cyclic map over the full circle
        shown = axes[0, 1].imshow(phase_shown, cmap="twilight", vmin=-np.pi, vmax=np.pi,
                                  extent=(0, extent_um, extent_um, 0))
        axes[0, 1].set_title("phase (rad, wrapped)")
    else:  # re-centred on its circular mean (a global offset means nothing), symmetric levels
        shown = axes[0, 1].imshow(phase_shown, cmap="RdBu_r", vmin=-spread, vmax=spread,
                                  extent=(0, extent_um, extent_um, 0))
        axes[0, 1].set_title(f"phase - ({centre + 0.0:+.2f}) rad")
    figure.colorbar(shown, ax=axes[0, 1], fraction=0.046)
    pupil_phase = np.where(np.abs(result.pupil) > 1e-3, np.angle(result.pupil), np.nan)
    shown = axes[0, 2].imshow(pupil_phase, cmap="twilight")
    axes[0, 2].set_title("pupil phase (rad)")
    figure.colorbar(shown, ax=axes[0, 2], fraction=0.046)

    indices = sorted(j for j in result.zernike_rad if j >= 2)
    values = [result.zernike_rad[j] for j in indices]
    zernike_std = result.extra.get("zernike_rad_std", {})
    undetermined = set(result.extra.get("undetermined", []))
    if any(abs(v) > 0 for v in values):
        flat = [j for j in indices if f"zernike_{j}" in undetermined]
        errors = [2 * (zernike_std.get(str(j)) or 0.0) for j in indices]
        colours = ["0.7" if j in flat else "tab:blue" for j in indices]
        axes[1, 0].bar(
            indices, values, color=colours, yerr=errors if zernike_std else None, capsize=2, error_kw={"elinewidth": 1}
        )
        axes[1, 0].set_xlabel("Noll index j")
        axes[1, 0].set_ylabel("rad")
        axes[1, 0].axhline(0, color="k", lw=0.5)
        title = "Zernike coefficients"
        if zernike_std:
            title += " (bars: +-2 s.e.)"
        if flat:
            title += f"\ngrey: undetermined by the data ({', '.join(f'Z{j}' for j in flat)})"
        axes[1, 0].set_title(title, fontsize=10)
    else:  # classic FP recovers a free pupil, not Zernike coefficients: say so instead of an empty plot
        axes[1, 0].set_title("Zernike coefficients")
        axes[1, 0].text(0.5, 0.5, f"{result.method} does not fit Zernike coefficients:\nits recovered pupil phase "
                        "is shown above", ha="center", va="center", transform=axes[1, 0].transAxes, fontsize=11)
        axes[1, 0].set_axis_off()

    estimated = np.asarray(result.led_positions_mm)
    axis = axes[1, 1]
    if dataset is not None:
        nominal = nominal_frame_positions_mm(dataset.meta)[: len(estimated)]
        axis.scatter(nominal[:, 0], nominal[:, 1], s=12, color="0.6", label="nominal")
        displacement = estimated - nominal
        largest = float(np.abs(displacement).max()) if displacement.size else 0.0
        magnify = 1.0 if largest == 0 else max(1.0, round(0.5 * dataset.meta.led_pitch_mm / largest))
        axis.quiver(
            nominal[:, 0],
            nominal[:, 1],
            displacement[:, 0] * magnify,
            displacement[:, 1] * magnify,
            angles="xy",
            scale_units="xy",
            scale=1,
            color="tab:red",
            width=0.004,
            label=f"estimated - nominal (x{magnify:g})",
        )
        axis.legend(loc="upper right", fontsize=8)
    else:
        axis.scatter(estimated[:, 0], estimated[:, 1], s=12, color="tab:red")
    g = result.geometry
    geometry_std = result.extra.get("led_geometry_std", {})

    def shown(name: str, value: float, digits: int) -> str:
        if name in undetermined:
            return f"{value:+.{digits}f} (undet.)"
        std = geometry_std.get(name)
        return f"{value:+.{digits}f}" + (f"+-{std:.{digits}f}" if std is not None else "")

    axis.set_title(
        f"LED map: shift ({shown('shift_x_mm', g.shift_x_mm, 2)}, {shown('shift_y_mm', g.shift_y_mm, 2)}) mm,\n"
        f"rot {shown('rotation_deg', g.rotation_deg, 2)} deg, h {shown('height_mm', g.height_mm, 1)} mm",
        fontsize=10,
    )
    axis.set_xlabel("X (mm, image x)")
    axis.set_ylabel("Y (mm, image y)")
    axis.set_aspect("equal")
    axis.invert_yaxis()

    history = np.asarray(result.loss_history, dtype=float)
    if history.size:
        axes[1, 2].semilogy(np.arange(1, history.size + 1), history)
    axes[1, 2].set_xlabel("iteration")
    axes[1, 2].set_title(f"loss ({result.method})")
    title = f"{result.source_dataset}: {result.method}, {result.iterations} iterations, {result.elapsed_s:.1f} s"
    if result.extra.get("partial"):
        title += f"  --  PARTIAL RESULT ({result.extra.get('stop_reason', 'stopped')})"
    figure.suptitle(title, color="tab:red" if result.extra.get("partial") else "black")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path
