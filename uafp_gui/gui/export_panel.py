"""Export panel: write the result folder, save / load calibration profiles, open files."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSettings, Signal
from PySide6.QtWidgets import (
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

__all__ = ["ExportPanel"]


class ExportPanel(QWidget):
    export_requested = Signal(Path)
    save_calibration_requested = Signal(Path)
    load_calibration_requested = Signal(Path)
    clear_calibration_requested = Signal()
    open_requested = Signal(Path)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QVBoxLayout(self)
        result_box = QGroupBox("Result folder (amplitude, phase, pupil, calibration.json, report.png)")
        result_layout = QVBoxLayout(result_box)
        row = QHBoxLayout()
        self.folder = QLineEdit()
        self.folder.setPlaceholderText("result folder")
        browse = QPushButton("...")
        browse.clicked.connect(self._browse_folder)
        row.addWidget(self.folder, 1)
        row.addWidget(browse)
        result_layout.addLayout(row)
        self.export_button = QPushButton("Export result")
        self.export_button.setObjectName("exportButton")
        self.export_button.clicked.connect(self.ask_export)
        result_layout.addWidget(self.export_button)
        layout.addWidget(result_box)

        calibration_box = QGroupBox("Calibration profile (the starting system for the next sample)")
        calibration_layout = QVBoxLayout(calibration_box)
        buttons = QHBoxLayout()
        save = QPushButton("Save...")
        load = QPushButton("Load...")
        clear = QPushButton("Clear")
        save.clicked.connect(self.ask_save_calibration)
        load.clicked.connect(self.ask_load_calibration)
        clear.clicked.connect(self.clear_calibration_requested)
        for button in (save, load, clear):
            buttons.addWidget(button)
        calibration_layout.addLayout(buttons)
        self.calibration_label = QLabel("No calibration loaded: the next reconstruction starts from the nominal system")
        self.calibration_label.setWordWrap(True)
        calibration_layout.addWidget(self.calibration_label)
        layout.addWidget(calibration_box)

        open_box = QGroupBox("Open (or drop a file / folder on the window)")
        open_layout = QVBoxLayout(open_box)
        open_buttons = QHBoxLayout()
        open_dataset = QPushButton("Open dataset...")
        open_result = QPushButton("Open result...")
        open_dataset.clicked.connect(self.ask_open_dataset)
        open_result.clicked.connect(self.ask_open_result)
        open_buttons.addWidget(open_dataset)
        open_buttons.addWidget(open_result)
        open_layout.addLayout(open_buttons)
        open_layout.addWidget(QLabel("Recent (double-click to open)"))
        self.recent = QListWidget()
        self.recent.itemDoubleClicked.connect(lambda item: self.open_requested.emit(Path(item.text())))
        open_layout.addWidget(self.recent)
        layout.addWidget(open_box, 1)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)

    def show_status(self, text: str) -> None:
        self.status.setText(text)

    def show_calibration(self, text: str) -> None:
        """What the loaded calibration is (or that there is none)."""
        self.calibration_label.setText(text)

    def restore_settings(self, settings: QSettings) -> None:
        self.folder.setText(str(settings.value("export/folder", "")))

    def save_settings(self, settings: QSettings) -> None:
        settings.setValue("export/folder", self.folder.text())

    def set_recent(self, paths: list[str]) -> None:
        self.recent.clear()
        self.recent.addItems(paths)

    def _browse_folder(self) -> None:
        """Pick an existing folder or type the name of a new one (Export creates it)."""
        dialog = QFileDialog(self, "Result folder (an existing one, or type a new name)", self.folder.text())
        dialog.setFileMode(QFileDialog.FileMode.AnyFile)
        dialog.setAcceptMode(QFileDialog.AcceptMode.AcceptSave)
        dialog.setOption(QFileDialog.Option.ShowDirsOnly, True)
        dialog.setLabelText(QFileDialog.DialogLabel.Accept, "Choose")
        if dialog.exec() and dialog.selectedFiles():
            self.folder.setText(dialog.selectedFiles()[0])

    def ask_export(self) -> None:
        text = self.folder.text().strip()
        if not text:
            self._browse_folder()
            text = self.folder.text().strip()
        if text:
            self.export_requested.emit(Path(text).expanduser())

    def ask_save_calibration(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save calibration", "calibration.json", "JSON (*.json)")
        if path:
            self.save_calibration_requested.emit(Path(path))

    def ask_load_calibration(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load calibration", "", "JSON (*.json)")
        if path:
            self.load_calibration_requested.emit(Path(path))

    def ask_open_dataset(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open dataset", "", "TIFF (*.tif *.tiff);;All files (*)")
        if path:
            self.open_requested.emit(Path(path))

    def ask_open_result(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open result folder")
        if folder:
            self.open_requested.emit(Path(folder))
