"""napari dock widget (npe2 contribution `uafp_gui.reconstruct_widget`): UA-FP on an open dataset.

Pick a dataset layer (opened with the uafp reader, so it carries `metadata["uafp_dataset"]`), set
the iterations and upsampling, press *Reconstruct*. The work is the app's own reconstruction driver
(`uafp_gui.session.reconstruction.LiveReconstruction`, which the desktop app and the CLI use), a generator run
on a worker thread with napari's `thread_worker` (superqt): every `ReconstructionUpdate` it
yields is drawn as the layers `uafp amplitude` / `uafp phase` (the preview, at its physical
scale) and moves the progress bar; *Cancel* ends it after the current iteration (`job.stop()`);
at the end the full-resolution result replaces the preview and `last_result` holds it.

Qt through qtpy (napari's own binding layer), so the widget works with whichever Qt napari runs.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

__all__ = ["ReconstructWidget", "dataset_from_layer"]

AMPLITUDE_LAYER = "uafp amplitude"
PHASE_LAYER = "uafp phase (rad)"


def dataset_from_layer(layer: Any) -> Any:
    """The `Dataset` behind a layer opened by the uafp reader (its frames and metadata)."""
    from uafp_gui.errors import ConfigError
    from uafp_gui.io.dataset import Dataset
    from uafp_gui.io.schema import DatasetMeta

    info = getattr(layer, "metadata", {}).get("uafp_dataset")
    if info is None:
        raise ConfigError(f"layer {layer.name!r} is not a uafp dataset: open the dataset's .tif with the uafp reader")
    meta = DatasetMeta.from_dict(info)
    frames = np.asarray(layer.data)
    if frames.ndim != 3 or frames.shape[0] != len(meta.frames):
        raise ConfigError(
            f"layer {layer.name!r} holds data of shape {frames.shape} but its metadata lists "
            f"{len(meta.frames)} frames: reopen the dataset"
        )
    return Dataset(meta=meta, frames=frames)


class ReconstructWidget(QWidget):
    """Dock widget: dataset layer, iterations, upsample, Reconstruct / Cancel, progress."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.job: Any = None
        self.worker: Any = None
        self.last_update: Any = None
        self.last_result: Any = None
        self.error: BaseException | None = None
        self.state = "idle"  # idle, running, finished, cancelled, failed
        self._object_shape: tuple[int, int] | None = None
        self._object_pixel_um = 1.0

        self.layer_box = QComboBox()
        self.iterations = QSpinBox()
        self.iterations.setRange(1, 10_000)
        self.iterations.setValue(40)
        self.upsample = QSpinBox()
        self.upsample.setRange(1, 8)
        self.upsample.setValue(4)
        self.run_button = QPushButton("Reconstruct")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar()
        self.status = QLabel("Open a uafp dataset (.tif), then press Reconstruct.")
        self.status.setWordWrap(True)

        form = QFormLayout()
        form.addRow("Dataset", self.layer_box)
        form.addRow("Iterations", self.iterations)
        form.addRow("Upsample", self.upsample)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addStretch(1)

        self.run_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        events = self.viewer.layers.events
        for event in (events.inserted, events.removed):
            event.connect(self._refresh_layers)
        self._refresh_layers()

    # ---- layers ------------------------------------------------------------------------------
    def dataset_layers(self) -> list[Any]:
        return [layer for layer in self.viewer.layers if "uafp_dataset" in getattr(layer, "metadata", {})]

    def _refresh_layers(self, *_: Any) -> None:
        current = self.layer_box.currentText()
        names = [layer.name for layer in self.dataset_layers()]
        self.layer_box.clear()
        self.layer_box.addItems(names)
        if current in names:
            self.layer_box.setCurrentText(current)
        self.run_button.setEnabled(bool(names) and self.state != "running")

    def _show(self, name: str, data: np.ndarray, scale: float, **kwargs: Any) -> None:
        if name in self.viewer.layers:
            layer = self.viewer.layers[name]
            layer.data = data
            layer.scale = (scale, scale)
        else:
            self.viewer.add_image(data, name=name, scale=(scale, scale), units=("micrometer", "micrometer"), **kwargs)

    # ---- run ---------------------------------------------------------------------------------
    def start(self) -> None:
        from napari.qt.threading import thread_worker

        from uafp_gui.errors import UafpError
        from uafp_gui.recon.uafp import UafpSettings
        from uafp_gui.session.reconstruction import LiveReconstruction, threads_beside_a_ui

        if self.state == "running":
            return
        name = self.layer_box.currentText()
        if not name:
            self.status.setText("No uafp dataset is open: open one with File > Open (the uafp reader).")
            return
        try:
            dataset = dataset_from_layer(self.viewer.layers[name])
            settings = UafpSettings(iterations=int(self.iterations.value()), upsample=int(self.upsample.value()))
        except UafpError as error:
            self.status.setText(str(error))
            self.state = "failed"
            return
        self.job = LiveReconstruction(
            settings, dataset=dataset, source_dataset=name, torch_threads=threads_beside_a_ui()
        )
        height, width = dataset.frame_shape
        self._object_shape = (height * settings.upsample, width * settings.upsample)
        self._object_pixel_um = dataset.meta.sample_pixel_um / settings.upsample
        self.progress.setRange(0, settings.iterations or 0)
        self.progress.setValue(0)
        self.error, self.last_update, self.last_result = None, None, None
        self.state = "running"
        self.status.setText(f"UA-FP on {name}: starting...")
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)

        job = self.job

        @thread_worker(start_thread=False)
        def work():
            yield from job.run(settings.iterations)
            if not job.cancel.is_set():
                return job.result()
            return None

        self.worker = work()
        self.worker.yielded.connect(self._on_update)
        self.worker.returned.connect(self._on_result)
        self.worker.errored.connect(self._on_error)
        self.worker.finished.connect(self._on_finished)
        self.worker.start()

    def cancel(self) -> None:
        """End the reconstruction after the current iteration (the engine's own cancel)."""
        if self.job is not None and self.state == "running":
            self.job.stop()
            self.status.setText("Cancelling after this iteration...")

    # ---- worker callbacks (UI thread) --------------------------------------------------------
    def _on_update(self, update: Any) -> None:
        self.last_update = update
        self.progress.setValue(min(update.iteration, self.progress.maximum()))
        assert self._object_shape is not None  # set by start()
        preview_scale = self._object_pixel_um * (self._object_shape[0] / update.amplitude.shape[0])
        self._show(AMPLITUDE_LAYER, update.amplitude, preview_scale, colormap="gray")
        self._show(
            PHASE_LAYER,
            update.phase,
            preview_scale,
            colormap="twilight_shifted",
            contrast_limits=(-math.pi, math.pi),
        )
        g = update.geometry
        self.status.setText(
            f"iteration {update.iteration}: loss {update.loss:.4g}; LED shift ({g.shift_x_mm:+.2f}, "
            f"{g.shift_y_mm:+.2f}) mm, rotation {g.rotation_deg:+.2f} deg, height {g.height_mm:.1f} mm"
        )

    def _on_result(self, result: Any) -> None:
        if result is None:
            return
        self.last_result = result
        pixel = float(result.object_pixel_um)
        self._show(AMPLITUDE_LAYER, np.abs(result.object_field), pixel, colormap="gray")
        self._show(PHASE_LAYER, np.angle(result.object_field), pixel, colormap="twilight_shifted")

    def _on_error(self, error: BaseException) -> None:
        self.error = error
        self.state = "failed"
        self.status.setText(f"Reconstruction failed: {error}")

    def _on_finished(self) -> None:
        if self.state == "running":
            cancelled = self.job is not None and self.job.cancel.is_set()
            self.state = "cancelled" if cancelled else "finished"
            done = self.last_update.iteration if self.last_update is not None else 0
            self.status.setText(f"Cancelled after {done} iterations." if cancelled else f"Done: {done} iterations.")
        self.run_button.setEnabled(bool(self.dataset_layers()))
        self.cancel_button.setEnabled(False)
        self.worker = None
