"""Devices panel: choose the LED array and camera, describe the microscope, connect.

The panel only collects choices (a `MicroscopeChoice`) and shows the connection state; the main
window connects on a background thread and reports back with `set_state`.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSettings, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from uafp_gui.acquisition.plan import MicroscopeDescription
from uafp_gui.devices.interfaces import Orientation
from uafp_gui.session.microscope import MicroscopeChoice

__all__ = ["COLOURS", "DevicesPanel"]

SIMULATED = "Simulated LED array"
AUTO = "Auto-detect"
COLOURS = {  # name -> (wavelength_um, rgb)
    "green (532 nm)": (0.532, (0, 255, 0)),
    "red (630 nm)": (0.630, (255, 0, 0)),
    "blue (470 nm)": (0.470, (0, 0, 255)),
}


def _spin(low: float, high: float, value: float, decimals: int = 3, suffix: str = "") -> QDoubleSpinBox:
    box = QDoubleSpinBox()
    box.setRange(low, high)
    box.setDecimals(decimals)
    box.setValue(value)
    box.setSuffix(suffix)
    return box


class DevicesPanel(QWidget):
    connect_requested = Signal()
    disconnect_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QVBoxLayout(self)

        led_box = QGroupBox("LED array")
        led_form = QFormLayout(led_box)
        port_row = QHBoxLayout()
        self.port_combo = QComboBox()
        self.port_combo.setEditable(True)
        self.port_combo.setToolTip("serial port of the LED array; Auto-detect probes every port with 'about'")
        self.refresh_ports_button = QPushButton("Refresh")
        self.refresh_ports_button.clicked.connect(self.refresh_ports)
        port_row.addWidget(self.port_combo, 1)
        port_row.addWidget(self.refresh_ports_button)
        led_form.addRow("Port", port_row)
        self.pitch = _spin(0.1, 50, 4.0, suffix=" mm")
        self.led_height = _spin(1, 1000, 90.0, decimals=2, suffix=" mm")
        self.rows = QSpinBox()
        self.rows.setRange(1, 256)
        self.rows.setValue(32)
        self.cols = QSpinBox()
        self.cols.setRange(1, 256)
        self.cols.setValue(32)
        self.axis_row = _spin(0, 256, 16, decimals=1)
        self.axis_col = _spin(0, 256, 16, decimals=1)
        shape_row = QHBoxLayout()
        shape_row.addWidget(self.rows)
        shape_row.addWidget(QLabel("x"))
        shape_row.addWidget(self.cols)
        axis_row = QHBoxLayout()
        axis_row.addWidget(QLabel("row"))
        axis_row.addWidget(self.axis_row)
        axis_row.addWidget(QLabel("col"))
        axis_row.addWidget(self.axis_col)
        led_form.addRow("Pitch", self.pitch)
        led_form.addRow("Height", self.led_height)
        led_form.addRow("Array (rows x cols)", shape_row)
        led_form.addRow("On-axis LED", axis_row)
        orientation = QHBoxLayout()
        self.flip_rows = QCheckBox("flip rows")
        self.flip_cols = QCheckBox("flip cols")
        self.transpose = QCheckBox("transpose")
        for box in (self.flip_rows, self.flip_cols, self.transpose):
            orientation.addWidget(box)
        led_form.addRow("Orientation", orientation)
        self.colour = QComboBox()
        self.colour.addItems(list(COLOURS))
        self.wavelength = _spin(0.2, 2.0, 0.532, suffix=" um")
        self.colour.currentTextChanged.connect(lambda name: self.wavelength.setValue(COLOURS[name][0]))
        colour_row = QHBoxLayout()
        colour_row.addWidget(self.colour)
        colour_row.addWidget(self.wavelength)
        led_form.addRow("Colour / wavelength", colour_row)
        layout.addWidget(led_box)

        camera_box = QGroupBox("Camera and optics")
        camera_form = QFormLayout(camera_box)
        self.camera_combo = QComboBox()
        self.camera_combo.addItems(["Simulated microscope", "Micro-Manager configuration"])
        camera_form.addRow("Camera", self.camera_combo)
        config_row = QHBoxLayout()
        self.mm_config = QLineEdit()
        self.mm_config.setPlaceholderText("MyScope.cfg")
        browse = QPushButton("Browse...")
        browse.clicked.connect(self._browse_config)
        config_row.addWidget(self.mm_config, 1)
        config_row.addWidget(browse)
        camera_form.addRow("Config file", config_row)
        self.objective_na = _spin(0.01, 0.99, 0.1)
        self.magnification = _spin(0.1, 200, 2.0, decimals=2)
        self.camera_pixel = _spin(0.1, 50, 3.69, suffix=" um")
        camera_form.addRow("Objective NA", self.objective_na)
        camera_form.addRow("Magnification", self.magnification)
        camera_form.addRow("Camera pixel", self.camera_pixel)
        layout.addWidget(camera_box)

        state_row = QHBoxLayout()
        self.connect_button = QPushButton("Connect")
        self.connect_button.setObjectName("connectButton")
        self.connect_button.clicked.connect(self.connect_requested)
        self.disconnect_button = QPushButton("Disconnect")
        self.disconnect_button.clicked.connect(self.disconnect_requested)
        state_row.addWidget(self.connect_button)
        state_row.addWidget(self.disconnect_button)
        layout.addLayout(state_row)
        self.state_label = QLabel("Not connected")
        self.state_label.setWordWrap(True)
        layout.addWidget(self.state_label)
        layout.addStretch(1)
        self.refresh_ports()
        self.set_state("Not connected", connected=False)

    # ---- choices ---------------------------------------------------------------------------
    def refresh_ports(self) -> None:
        import serial.tools.list_ports

        current = self.port_combo.currentText()
        self.port_combo.clear()
        self.port_combo.addItems([SIMULATED, AUTO, *sorted(p.device for p in serial.tools.list_ports.comports())])
        if current:
            self.port_combo.setCurrentText(current)

    def _browse_config(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Micro-Manager configuration", "", "Config (*.cfg)")
        if path:
            self.mm_config.setText(path)
            self.camera_combo.setCurrentIndex(1)

    def select_port(self, port: str) -> None:
        self.port_combo.setCurrentText(port)

    def restore_settings(self, settings: QSettings) -> None:
        self.mm_config.setText(str(settings.value("devices/mm_config", "")))

    def save_settings(self, settings: QSettings) -> None:
        settings.setValue("devices/mm_config", self.mm_config.text())

    def use_simulated(self) -> None:
        self.port_combo.setCurrentText(SIMULATED)
        self.camera_combo.setCurrentIndex(0)

    def choice(self) -> MicroscopeChoice:
        port = self.port_combo.currentText().strip()
        led_port = None if port in ("", SIMULATED) else ("auto" if port == AUTO else port)
        config = self.mm_config.text().strip() if self.camera_combo.currentIndex() == 1 else ""
        return MicroscopeChoice(
            led_port=led_port,
            mm_config=Path(config).expanduser() if config else None,
            orientation=Orientation(self.flip_rows.isChecked(), self.flip_cols.isChecked(), self.transpose.isChecked()),
            pitch_mm=self.pitch.value(),
            rgb=COLOURS[self.colour.currentText()][1],
        )

    def microscope(self, sample: str = "") -> MicroscopeDescription:
        """The nominal microscope as entered; `ConfigError` when a value is invalid."""
        return MicroscopeDescription.from_dict(
            {
                "wavelength_um": self.wavelength.value(),
                "objective_na": self.objective_na.value(),
                "magnification": self.magnification.value(),
                "camera_pixel_um": self.camera_pixel.value(),
                "led_pitch_mm": self.pitch.value(),
                "led_height_mm": self.led_height.value(),
                "led_array_shape": (self.rows.value(), self.cols.value()),
                "led_on_axis": (self.axis_row.value(), self.axis_col.value()),
                "sample": sample,
            }
        )

    def show_microscope(self, microscope: MicroscopeDescription) -> None:
        self.wavelength.setValue(microscope.wavelength_um)
        self.objective_na.setValue(microscope.objective_na)
        self.magnification.setValue(microscope.magnification)
        self.camera_pixel.setValue(microscope.camera_pixel_um)
        self.pitch.setValue(microscope.led_pitch_mm)
        self.led_height.setValue(microscope.led_height_mm)
        self.rows.setValue(microscope.led_array_shape[0])
        self.cols.setValue(microscope.led_array_shape[1])
        self.axis_row.setValue(microscope.led_on_axis[0])
        self.axis_col.setValue(microscope.led_on_axis[1])

    def set_state(self, text: str, *, connected: bool, busy: bool = False) -> None:
        self.state_label.setText(text)
        self.connect_button.setEnabled(not busy)
        self.connect_button.setText("Reconnect" if connected else "Connect")
        self.disconnect_button.setEnabled(connected and not busy)
