"""Acquisition panel: the plan editor, start / pause / cancel, progress with ETA and the
thumbnail strip where frames land."""

from __future__ import annotations

from collections import deque
from pathlib import Path

import numpy as np
from PySide6.QtCore import QSettings, QSize, Qt, Signal
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListView,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from uafp_gui.acquisition.plan import AcquisitionPlan
from uafp_gui.errors import ConfigError
from uafp_gui.gui.images import gray_pixmap

__all__ = ["AcquisitionPanel"]

MAX_THUMBNAILS = 400
THUMBNAILS_PER_TICK = 16  # the rest wait for the next refresh: each tick stays short


class AcquisitionPanel(QWidget):
    start_requested = Signal()
    pause_requested = Signal(bool)  # True: pause, False: resume
    cancel_requested = Signal()
    plan_changed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QVBoxLayout(self)
        form = QFormLayout()
        self.led_set = QComboBox()
        self.led_set.addItems(["square", "disk", "list"])
        self.square_size = QSpinBox()
        self.square_size.setRange(1, 63)
        self.square_size.setValue(15)
        self.disk_na = QDoubleSpinBox()
        self.disk_na.setRange(0.0, 0.99)
        self.disk_na.setDecimals(3)
        self.disk_na.setValue(0.3)
        self.led_list = QLineEdit()
        self.led_list.setPlaceholderText("r,c;r,c;...")
        self.led_set_stack = QStackedWidget()
        for widget in (self.square_size, self.disk_na, self.led_list):
            self.led_set_stack.addWidget(widget)
        self.led_set.currentIndexChanged.connect(self.led_set_stack.setCurrentIndex)
        form.addRow("LED set", self.led_set)
        form.addRow("Size / NA / list", self.led_set_stack)
        self.order = QComboBox()
        self.order.addItems(["spiral", "na", "as_given"])
        form.addRow("Order", self.order)
        self.exposure = QDoubleSpinBox()
        self.exposure.setRange(0.01, 60000)
        self.exposure.setValue(10.0)
        self.exposure.setSuffix(" ms")
        form.addRow("Bright-field exposure", self.exposure)
        df_row = QHBoxLayout()
        self.use_df = QCheckBox()
        self.df_exposure = QDoubleSpinBox()
        self.df_exposure.setRange(0.01, 60000)
        self.df_exposure.setValue(50.0)
        self.df_exposure.setSuffix(" ms")
        self.df_exposure.setEnabled(False)
        self.use_df.toggled.connect(self.df_exposure.setEnabled)
        df_row.addWidget(self.use_df)
        df_row.addWidget(self.df_exposure, 1)
        form.addRow("Dark-field exposure", df_row)
        self.auto_exposure = QCheckBox("meter each NA ring before the run")
        form.addRow("Auto exposure", self.auto_exposure)
        out_row = QHBoxLayout()
        self.output = QLineEdit()
        self.output.setPlaceholderText("run.tif")
        browse = QPushButton("...")
        browse.clicked.connect(self._browse)
        out_row.addWidget(self.output, 1)
        out_row.addWidget(browse)
        form.addRow("Output file", out_row)
        self.overwrite = QCheckBox("overwrite an existing file")
        form.addRow("", self.overwrite)
        self.reconstruct_live = QCheckBox("reconstruct while acquiring")
        self.reconstruct_live.setChecked(True)
        form.addRow("Reconstruction", self.reconstruct_live)
        layout.addLayout(form)
        for signal in (self.led_set.currentIndexChanged, self.square_size.valueChanged, self.disk_na.valueChanged,
                       self.order.currentIndexChanged, self.led_list.editingFinished):
            signal.connect(self.plan_changed)

        buttons = QHBoxLayout()
        self.start_button = QPushButton("Start")
        self.start_button.setObjectName("startAcquisitionButton")
        self.pause_button = QPushButton("Pause")
        self.pause_button.setCheckable(True)
        self.cancel_button = QPushButton("Cancel")
        self.start_button.clicked.connect(self.start_requested)
        self.pause_button.toggled.connect(self._pause_toggled)
        self.cancel_button.clicked.connect(self.cancel_requested)
        for button in (self.start_button, self.pause_button, self.cancel_button):
            buttons.addWidget(button)
        layout.addLayout(buttons)
        self.progress = QProgressBar()
        self.progress.setFormat("%v / %m frames")
        layout.addWidget(self.progress)
        self.eta = QLabel("")
        # New text each tick must not re-lay out the window.
        self.eta.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        layout.addWidget(self.eta)
        # Clipped pixels, frame by frame and in the run's summary (red in the thumbnails and live view).
        self.saturation = QLabel("")
        self.saturation.setObjectName("saturationWarning")
        self.saturation.setStyleSheet("color: #c00000;")
        self.saturation.setWordWrap(True)
        self.saturation.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self.saturation.setFixedHeight(2 * self.saturation.fontMetrics().lineSpacing() + 4)
        layout.addWidget(self.saturation)
        self.thumbnails = QListWidget()
        self.thumbnails.setViewMode(QListView.ViewMode.IconMode)
        self.thumbnails.setFlow(QListView.Flow.LeftToRight)
        self.thumbnails.setWrapping(False)
        self.thumbnails.setIconSize(QSize(64, 64))
        self.thumbnails.setFixedHeight(100)
        self.thumbnails.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOn)
        layout.addWidget(self.thumbnails)
        layout.addStretch(1)
        self._pending_thumbnails: deque[tuple[int, np.ndarray, tuple]] = deque()
        self.set_running(False)

    def _browse(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Dataset to write", self.output.text(), "TIFF (*.tif *.tiff)")
        if path:
            self.output.setText(path)

    def _pause_toggled(self, paused: bool) -> None:
        self.pause_button.setText("Resume" if paused else "Pause")
        self.pause_requested.emit(paused)

    # ---- plan ------------------------------------------------------------------------------
    def plan(self) -> AcquisitionPlan:
        """The plan as edited; `ConfigError` names a bad field."""
        kind = self.led_set.currentText()
        leds: list[list[int]] = []
        if kind == "list":
            try:
                leds = [[int(v) for v in item.split(",")] for item in self.led_list.text().split(";") if item.strip()]
            except ValueError:
                raise ConfigError("the LED list must read r,c;r,c (image rows and columns)") from None
            if any(len(led) != 2 for led in leds):
                raise ConfigError("the LED list must read r,c;r,c (image rows and columns)")
        return AcquisitionPlan(
            led_set=kind,
            square_size=self.square_size.value(),
            max_illumination_na=self.disk_na.value() if kind == "disk" else None,
            leds=tuple((led[0], led[1]) for led in leds),
            order=self.order.currentText(),
            brightfield_exposure_ms=self.exposure.value(),
            darkfield_exposure_ms=self.df_exposure.value() if self.use_df.isChecked() else None,
            auto_exposure=self.auto_exposure.isChecked(),
        )

    def wants_live_reconstruction(self) -> bool:
        return self.reconstruct_live.isChecked()

    def overwrite_allowed(self) -> bool:
        return self.overwrite.isChecked()

    def restore_settings(self, settings: QSettings) -> None:
        self.output.setText(str(settings.value("acquisition/output", "")))

    def save_settings(self, settings: QSettings) -> None:
        settings.setValue("acquisition/output", self.output.text())

    def output_path(self) -> Path:
        text = self.output.text().strip()
        if not text:
            raise ConfigError("choose an output file for the dataset (Acquisition panel, Output file)")
        return Path(text).expanduser()

    # ---- run state -------------------------------------------------------------------------
    def set_running(self, running: bool) -> None:
        self.start_button.setEnabled(not running)
        self.pause_button.setEnabled(running)
        self.cancel_button.setEnabled(running)
        if not running:
            self.pause_button.blockSignals(True)
            self.pause_button.setChecked(False)
            self.pause_button.setText("Pause")
            self.pause_button.blockSignals(False)

    def show_saturation(self, text: str) -> None:
        """The clipped-pixels warning ("" clears it)."""
        self.saturation.setText(text)

    def show_all_done(self, total: int) -> None:
        """A dataset opened from disk: every frame is there."""
        self.progress.setValue(total)

    def reset_progress(self, total: int) -> None:
        self.thumbnails.clear()
        self._pending_thumbnails.clear()
        self.progress.setFormat("%v / %m frames" if total else "no frames open")
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(0)
        self.eta.setText("")

    def show_progress(self, done: int, total: int, elapsed_s: float, eta_s: float) -> None:
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(done)
        self.eta.setText(f"{done}/{total} frames, {elapsed_s:.1f} s elapsed, about {eta_s:.1f} s left")

    def queue_thumbnail(self, index: int, thumbnail: np.ndarray, leds) -> None:
        """Queue an 8-bit thumbnail (`jobs.frame_thumbnail`, made off the UI thread) for the strip."""
        if self.thumbnails.count() + len(self._pending_thumbnails) < MAX_THUMBNAILS:
            self._pending_thumbnails.append((index, thumbnail, tuple(leds)))

    @property
    def thumbnails_pending(self) -> int:
        return len(self._pending_thumbnails)

    def add_queued_thumbnails(self, limit: int = THUMBNAILS_PER_TICK) -> None:
        """Add up to `limit` queued thumbnails, oldest first, and scroll to the last once."""
        item = None
        for _ in range(min(limit, len(self._pending_thumbnails))):
            index, thumbnail, leds = self._pending_thumbnails.popleft()
            item = QListWidgetItem(QIcon(gray_pixmap(thumbnail)), str(index))
            item.setToolTip(f"frame {index}: LEDs {list(leds)}")
            self.thumbnails.addItem(item)
        if item is not None:
            self.thumbnails.scrollToItem(item)
