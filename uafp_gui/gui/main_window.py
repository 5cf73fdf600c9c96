"""The main window: docks for every panel, and the glue between panels, devices and workers.

Threads: device commands and connecting run on the `devices` TaskRunner, file reading and
writing on the `io` TaskRunner; the acquisition, the reconstruction and the live camera are
generators on `GeneratorWorker`s. One QTimer (`REFRESH_MS`) pulls what the workers produced
and redraws: intermediate reconstruction updates and camera frames are dropped.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PySide6.QtCore import QByteArray, QSettings, QStandardPaths, Qt, QTimer
from PySide6.QtGui import QAction, QCloseEvent, QDragEnterEvent, QDropEvent, QKeySequence, QPaintEvent
from PySide6.QtWidgets import QDockWidget, QLabel, QMainWindow, QMenu, QWidget

from uafp_gui.errors import ConfigError, UafpError
from uafp_gui.gui.acquisition_panel import MAX_THUMBNAILS, AcquisitionPanel
from uafp_gui.gui.devices_panel import DevicesPanel
from uafp_gui.gui.dialogs import show_error
from uafp_gui.gui.export_panel import ExportPanel
from uafp_gui.gui.led_map import LedMapPanel
from uafp_gui.gui.live_view import LiveViewPanel
from uafp_gui.gui.previews import (
    AcquiredFrame,
    acquisition_events,
    camera_stream,
    dataset_full_scale,
    format_duration,
    frame_preview,
    frame_thumbnail,
    progress_text,
)
from uafp_gui.gui.recon_panel import ReconPanel
from uafp_gui.gui.workers import GeneratorWorker, TaskRunner
from uafp_gui.recon.choices import StopReason
from uafp_gui.session.acquisition import AcquisitionSession
from uafp_gui.session.fullfield import (
    FullFieldJob,
    MosaicCanvas,
    crop_region,
    full_field_folder_for,
    local_workers_beside_a_ui,
)
from uafp_gui.session.microscope import OpenedMicroscope, open_microscope, pattern_leds
from uafp_gui.session.reconstruction import (
    LiveReconstruction,
    autosave_folder_for,
    threads_beside_a_ui,
    warm_up_solver,
)

if TYPE_CHECKING:
    from uafp_gui.recon.settings import UafpSettings

__all__ = ["MainWindow"]

REFRESH_MS = 250  # views redraw at most 4 times a second
MAX_RECENT = 10
DOCK_WIDTH_PX = 360  # the side docks' width on first start
STATE_VERSION = 1
QUIT_WAIT_S = 0.8  # quit, Stop and Cancel act within a second: jobs get this long to end cleanly


class MainWindow(QMainWindow):
    """`simulation`: settings of the simulated microscope (default: the `misaligned` preset);
    `probe_hardware`: look for an LED array in the background after start-up."""

    def __init__(
        self,
        settings: QSettings | None = None,
        *,
        simulation: Any = None,
        probe_hardware: bool = True,
        connect_on_start: bool = True,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("uafp - Fourier ptychographic microscope")
        self.setAcceptDrops(True)
        self.settings = settings if settings is not None else QSettings("uafp", "uafp-gui")
        if simulation is None:  # the simulated microscope's default (uafp_gui.simulated.camera)
            from uafp_gui.simulate import PRESETS

            simulation = PRESETS["misaligned"]
        self.simulation = simulation
        self.devices = TaskRunner("devices", self)
        self.io = TaskRunner("io", self)
        self.engine_loader = TaskRunner("engine", self)
        self.engine_ready = False
        self._after_engine: Any = None  # what the user asked for while the engine was loading
        self.core: Any = None
        self.led_array: Any = None
        self.device_microscope: Any = None  # the simulation's nominal microscope, or None for hardware
        self.connection_text = "not connected"
        self.acquisition: Any = None
        self.acq_worker: GeneratorWorker | None = None
        self.recon_job: LiveReconstruction | None = None
        self.recon_worker: GeneratorWorker | None = None
        self.field_worker: GeneratorWorker | None = None  # a full-field (tiled) run
        self.field_job: FullFieldJob | None = None
        self.mosaic: MosaicCanvas | None = None
        self._recon_ended_worker: GeneratorWorker | None = None  # the last worker whose end the window handled
        self.live_worker: GeneratorWorker | None = None
        self.live_exposure_ms = [10.0]
        self.dataset: Any = None
        self.calibration: Any = None
        self.last_export: Path | None = None
        self.saturated_frames = 0  # frames of the running acquisition with clipped pixels
        self._closing = False

        self.recon_panel = ReconPanel()
        self.setCentralWidget(self.recon_panel)
        self.devices_panel = DevicesPanel()
        self.acquisition_panel = AcquisitionPanel()
        self.export_panel = ExportPanel()
        self.led_map = LedMapPanel()
        self.live_view = LiveViewPanel()
        self.docks: dict[str, QDockWidget] = {}
        left = Qt.DockWidgetArea.LeftDockWidgetArea
        right = Qt.DockWidgetArea.RightDockWidgetArea
        for name, title, widget, area in (
            ("devices", "Devices", self.devices_panel, left),
            ("acquisition", "Acquisition", self.acquisition_panel, left),
            ("export", "Export", self.export_panel, left),
            ("ledmap", "LED map", self.led_map, right),
            ("live", "Live view", self.live_view, right),
        ):
            dock = QDockWidget(title, self)
            dock.setObjectName(f"dock_{name}")
            dock.setWidget(widget)
            self.addDockWidget(area, dock)
            self.docks[name] = dock
        self.tabifyDockWidget(self.docks["devices"], self.docks["acquisition"])
        self.tabifyDockWidget(self.docks["acquisition"], self.docks["export"])
        self.docks["acquisition"].raise_()
        self.splitDockWidget(self.docks["ledmap"], self.docks["live"], Qt.Orientation.Vertical)
        self.connection_label = QLabel("")
        self.statusBar().addPermanentWidget(self.connection_label)
        self._build_menus()
        self._wire()
        self._restore_settings()

        self.timer = QTimer(self)
        self.timer.setInterval(REFRESH_MS)
        self.timer.timeout.connect(self.refresh)
        self.timer.start()
        self._connect_on_start = connect_on_start
        self._probe_on_start = probe_hardware
        self._started = False

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802 - Qt API
        super().paintEvent(event)
        if not self._started:  # after the first paint: the window is on screen before anything heavy loads
            self._started = True
            QTimer.singleShot(0, self._start_background_work)

    def _start_background_work(self) -> None:
        """torch and the solver's lazily loaded parts load off the UI thread; the simulated
        microscope connects (and the LED array is looked for) on the devices thread."""
        if self._closing:
            return
        self._load_engine()
        if self._connect_on_start:
            self.connect_simulated(startup=True)
            if self._probe_on_start:
                self._probe_hardware()

    # ------------------------------------------------------------------ construction
    def _load_engine(self) -> None:
        def loaded(_: object) -> None:
            self.engine_ready = True
            self.recon_panel.engine_loaded()
            waiting, self._after_engine = self._after_engine, None
            if waiting is not None:
                waiting()

        self.engine_loader.submit(warm_up_solver, loaded,
                                  lambda error: self.error("Cannot load the reconstruction engine", error))

    def _build_menus(self) -> None:
        file_menu = self.menuBar().addMenu("&File")
        self._action(
            file_menu, "Open dataset...", self.export_panel.ask_open_dataset, QKeySequence.StandardKey.Open
        )
        self._action(file_menu, "Open result folder...", self.export_panel.ask_open_result)
        self.recent_menu = QMenu("Open recent", self)
        file_menu.addMenu(self.recent_menu)
        file_menu.addSeparator()
        self._action(file_menu, "Export result", self.export_panel.ask_export, QKeySequence("Ctrl+E"))
        self._action(file_menu, "Save calibration...", self.export_panel.ask_save_calibration)
        self._action(file_menu, "Load calibration...", self.export_panel.ask_load_calibration)
        file_menu.addSeparator()
        self._action(file_menu, "Quit", self.close, QKeySequence.StandardKey.Quit)
        devices_menu = self.menuBar().addMenu("&Devices")
        self._action(devices_menu, "Use the simulated microscope", self.connect_simulated)
        self._action(devices_menu, "Connect as set in Devices panel", self.connect_devices)
        self._action(devices_menu, "Disconnect", self.disconnect_devices)
        view_menu = self.menuBar().addMenu("&View")
        for dock in self.docks.values():
            view_menu.addAction(dock.toggleViewAction())

    def _action(self, menu: QMenu, text: str, slot, shortcut=None) -> QAction:
        action = QAction(text, self)
        if shortcut is not None:
            action.setShortcut(shortcut)
        action.triggered.connect(lambda _=False: slot())
        menu.addAction(action)
        return action

    def _wire(self) -> None:
        self.devices_panel.connect_requested.connect(self.connect_devices)
        self.devices_panel.disconnect_requested.connect(self.disconnect_devices)
        self.led_map.led_clicked.connect(self.toggle_led)
        self.led_map.pattern_requested.connect(self.light_pattern)
        self.live_view.live_toggled.connect(self.set_live)
        self.live_view.exposure_changed.connect(self._exposure_changed)
        self.acquisition_panel.start_requested.connect(self.start_acquisition)
        self.acquisition_panel.pause_requested.connect(self.pause_acquisition)
        self.acquisition_panel.cancel_requested.connect(self.cancel_acquisition)
        self.acquisition_panel.plan_changed.connect(self._show_plan)
        self.recon_panel.start_requested.connect(self.start_reconstruction)
        self.recon_panel.field_mode.currentIndexChanged.connect(
            lambda _=0: self.live_view.show_region(self.recon_panel.mode() == "region"))
        self.recon_panel.region_changed.connect(self.live_view.set_region)
        self.live_view.region_drawn.connect(self.recon_panel.set_region)
        self.recon_panel.stop_requested.connect(self.stop_reconstruction)
        self.export_panel.export_requested.connect(self.export_result)
        self.export_panel.save_calibration_requested.connect(self.save_calibration)
        self.export_panel.load_calibration_requested.connect(self.load_calibration)
        self.export_panel.clear_calibration_requested.connect(self.clear_calibration)
        self.export_panel.open_requested.connect(self.open_path)

    # ------------------------------------------------------------------ messages
    def error(self, title: str, error: BaseException | str) -> None:
        self.statusBar().showMessage(f"{title}: {error}", 10000)
        if not self._closing:
            show_error(self, title, error)

    def status(self, text: str, timeout_ms: int = 8000) -> None:
        self.statusBar().showMessage(text, timeout_ms)

    # ------------------------------------------------------------------ devices
    @property
    def connected(self) -> bool:
        return self.core is not None

    def microscope(self) -> Any:
        """The nominal microscope: the simulation's, or the Devices panel's for hardware."""
        if self.device_microscope is not None:
            return self.device_microscope
        microscope = self.devices_panel.microscope()
        if self.led_array is not None and tuple(self.led_array.shape) != microscope.led_array_shape:
            from dataclasses import replace

            rows, cols = self.led_array.shape
            microscope = replace(microscope, optics=microscope.optics.replace(led_array_shape=(rows, cols)))
        return microscope

    def connect_simulated(self, startup: bool = False) -> None:
        self.devices_panel.use_simulated()
        self.connect_devices(startup=startup)

    def connect_devices(self, startup: bool = False) -> None:
        if self._busy_acquiring("connect"):
            return
        try:
            choice = self.devices_panel.choice()
        except UafpError as error:
            self.error("Cannot connect", error)
            return
        self._release_devices()
        self.devices_panel.set_state("Connecting...", connected=False, busy=True)
        simulation = self.simulation

        def done(opened: OpenedMicroscope) -> None:
            self.core, self.led_array = opened.core, opened.led_array
            self.device_microscope = opened.microscope
            if self.device_microscope is not None:
                self.devices_panel.show_microscope(self.device_microscope)
            self.live_view.set_bit_depth(opened.bit_depth)
            self.connection_text = opened.description
            self.devices_panel.set_state(f"Connected: {self.connection_text}", connected=True)
            self.connection_label.setText(
                "Simulated microscope" if choice.simulated else f"Hardware: {self.connection_text}"
            )
            if startup:
                self.status("No hardware found: running on the simulated microscope. To use real hardware, "
                            "choose the LED port and camera in Devices and press Connect.", 0)
            else:
                self.status(f"Connected: {self.connection_text}")
            self._show_plan()

        def failed(error: BaseException) -> None:
            self.devices_panel.set_state(f"Not connected: {error}", connected=False)
            self.connection_label.setText("Not connected")
            self.error("Cannot connect", error)

        self.devices.submit(lambda: open_microscope(choice, simulation), done, failed)

    def _probe_hardware(self) -> None:
        from uafp_gui.devices.illuminate import find_led_array_port

        def found(port: str) -> None:
            self.devices_panel.refresh_ports()
            self.devices_panel.select_port(port)
            self.status(f"An LED array answered on {port}: choose your camera in Devices and press Connect "
                        "to switch from the simulated microscope.", 0)

        # Probing runs on its own thread so a slow port never delays LED commands.
        self._probe_runner = TaskRunner("probe", self)
        self._probe_runner.submit(lambda: find_led_array_port(boot_timeout_s=1.5), found, lambda _error: None)

    def _release_devices(self) -> None:
        self._stop_worker(self.live_worker)
        self.live_view.set_live(False)
        core, led_array = self.core, self.led_array
        self.core = self.led_array = None
        if led_array is not None:
            self.devices.submit(led_array.close, on_error=lambda _error: None)
        del core

    def disconnect_devices(self) -> None:
        if self._busy_acquiring("disconnect"):
            return
        self._release_devices()
        self.devices_panel.set_state("Not connected", connected=False)
        self.connection_label.setText("Not connected")

    def _busy_acquiring(self, what: str) -> bool:
        if self.acq_worker is not None and self.acq_worker.isRunning():
            self.error(f"Cannot {what}", ConfigError(f"an acquisition is running: cancel it before you {what}"))
            return True
        return False

    def _require_connection(self, title: str) -> bool:
        if not self.connected:
            self.error(title, ConfigError("no microscope is connected: press Connect in the Devices panel"))
            return False
        return True

    # ------------------------------------------------------------------ LEDs
    def toggle_led(self, row: int, col: int) -> None:
        if not self._require_connection("Cannot light the LED") or self._busy_acquiring("light LEDs"):
            return
        led_array = self.led_array
        leds = [] if led_array.lit == frozenset({(row, col)}) else [(row, col)]
        self._light(leds)

    def light_pattern(self, pattern: str) -> None:
        if not self._require_connection("Cannot light the LEDs") or self._busy_acquiring("light LEDs"):
            return
        leds = sorted(self.led_map.planned) if pattern == "plan" else pattern_leds(self.microscope(), pattern)
        self._light(leds)

    def _light(self, leds: list) -> None:
        led_array = self.led_array

        def work():
            if leds:
                led_array.light(leds)
            else:
                led_array.clear()
            return led_array.lit

        self.devices.submit(work, self.led_map.set_lit, lambda error: self.error("LED array error", error))

    # ------------------------------------------------------------------ live view
    def _exposure_changed(self, value: float) -> None:
        self.live_exposure_ms[0] = float(value)

    def set_live(self, on: bool) -> None:
        if not on:
            self._stop_worker(self.live_worker)
            self.live_worker = None
            return
        if not self._require_connection("Cannot start the live view") or self._busy_acquiring("start the live view"):
            self.live_view.set_live(False)
            return
        core = self.core
        self.live_exposure_ms[0] = self.live_view.exposure_ms()
        full_scale = self.live_view.full_scale
        worker = GeneratorWorker(lambda: camera_stream(core, self.live_exposure_ms, full_scale), name="uafp-live",
                                 parent=self)
        worker.failed.connect(lambda error: self.error("Camera error", error))
        worker.ended.connect(lambda: self.live_view.set_live(False))
        self.live_worker = worker
        worker.start()

    # ------------------------------------------------------------------ acquisition
    def _show_plan(self) -> None:
        try:
            microscope = self.microscope()
            self.led_map.set_microscope(microscope)
            self.led_map.set_planned(self.acquisition_panel.plan().led_sequence(microscope))
        except UafpError as error:
            self.status(f"Plan: {error}")

    def start_acquisition(self) -> None:
        if not self._require_connection("Cannot start the acquisition") or self._busy_acquiring("start another"):
            return
        if self.recon_worker is not None and self.recon_worker.isRunning():
            self.error("Cannot start the acquisition", ConfigError("a reconstruction is running: stop it first"))
            return
        if self.acquisition_panel.wants_live_reconstruction() and self._engine_loading(self.start_acquisition):
            return
        from uafp_gui.acquisition.runner import Acquisition

        try:
            plan = self.acquisition_panel.plan()
            out = self.acquisition_panel.output_path()
            microscope = self.microscope()
            settings = self.recon_panel.settings() if self.acquisition_panel.wants_live_reconstruction() else None
            acquisition = Acquisition(
                self.core, self.led_array, plan, out, microscope, overwrite=self.acquisition_panel.overwrite_allowed()
            )
        except UafpError as error:
            self.error("Cannot start the acquisition", error)
            return
        self._stop_worker(self.live_worker)
        self.live_view.set_live(False)
        self.acquisition = acquisition
        self.dataset = None
        self.recon_panel.led_pitch_mm = microscope.led_pitch_mm
        job = None
        if settings is not None:
            job = LiveReconstruction(
                settings, calibration=self.calibration, source_dataset=out.name, torch_threads=threads_beside_a_ui()
            )
            job.autosave_folder = self.autosave_folder(out)
            self._set_recon_job(job)
        session = AcquisitionSession(acquisition, job)
        self.acquisition_panel.reset_progress(len(plan.led_sequence(microscope)))
        self.acquisition_panel.set_running(True)
        full_scale = self.live_view.full_scale
        worker = GeneratorWorker(
            lambda: acquisition_events(session, full_scale), name="uafp-acquisition", keep_all=True,
            on_stop=session.cancel, parent=self,
        )
        worker.failed.connect(lambda error: self.error("Acquisition failed", error))
        worker.ended.connect(self._acquisition_ended)
        self.acq_worker = worker
        worker.start()
        if job is not None:
            self._run_recon(job, None)
        self.status(f"Acquiring {out}...")

    def pause_acquisition(self, paused: bool) -> None:
        if self.acquisition is not None:
            (self.acquisition.pause if paused else self.acquisition.resume)()

    def cancel_acquisition(self) -> None:
        if self.acq_worker is not None:
            self.acq_worker.stop()

    def _acquisition_ended(self) -> None:
        self._drain_acquisition()
        self.acquisition_panel.set_running(False)
        if self.acquisition is not None and self.acquisition.frames_written:
            self._add_recent(self.acquisition.out_path)

    def _drain_acquisition(self) -> None:
        """Take the acquisition's events: progress once, thumbnails queued (a few drawn a tick),
        the newest preview shown, the LED map told which LEDs the newest frame used."""
        from uafp_gui.acquisition.events import AcquisitionFinished, AcquisitionPaused, AcquisitionStarted

        panel = self.acquisition_panel
        if self.acq_worker is not None:
            last_frame = last_preview = None
            for item in self.acq_worker.take():
                if isinstance(item, AcquiredFrame):
                    event = item.event
                    panel.queue_thumbnail(event.index, item.thumbnail, event.spec.leds)
                    last_frame = event
                    if event.saturated_pixels:  # per frame: clipped pixels are lost data
                        self.saturated_frames += 1
                        panel.show_saturation(
                            f"Saturated: frame {event.index} has {event.saturated_pixels} clipped pixels "
                            f"({100 * event.saturated_fraction:.1f} %); {self.saturated_frames} frames so far. "
                            "Shorten the exposure or use auto exposure.")
                    if item.preview is not None:
                        last_preview = (event, item.preview)
                elif isinstance(item, AcquisitionStarted):
                    panel.reset_progress(item.total)
                    self.saturated_frames = 0
                    panel.show_saturation("")
                elif isinstance(item, AcquisitionPaused):
                    self.status(f"Paused before frame {item.next_index} of {item.total}", 0)
                elif isinstance(item, AcquisitionFinished):
                    summary = item.saturation_summary()
                    self.status(f"Acquisition {item.reason}: {item.frames_written} of {item.total} frames in "
                                f"{item.path} ({item.elapsed_s:.1f} s)" + (f". Warning: {summary}" if summary else ""),
                                0)
                    if summary:
                        panel.show_saturation(f"Warning: {summary}.")
            if last_frame is not None:
                panel.show_progress(last_frame.done, last_frame.total, last_frame.elapsed_s, last_frame.eta_s)
                self.led_map.set_lit(last_frame.spec.leds)
            if last_preview is not None:
                event, preview = last_preview
                self.live_view.show_preview(preview, f"frame {event.index}, LEDs {list(event.spec.leds)}")
        panel.add_queued_thumbnails()

    # ------------------------------------------------------------------ reconstruction
    def _set_recon_job(self, job: LiveReconstruction | None) -> None:
        self.recon_job = job

    def _engine_loading(self, then) -> bool:
        """True (and `then` runs once it has loaded) while torch is still loading: importing it here
        would freeze the window until the loader thread is done."""
        if self.engine_ready:
            return False
        self._after_engine = then
        self.status("Loading the reconstruction engine: this starts as soon as it is ready", 0)
        return True

    def start_reconstruction(self) -> None:
        """Start UA-FP on the opened dataset (the whole frame, a region of it, or the full field in
        tiles), or continue the current one-field reconstruction."""
        if self.recon_worker is not None and self.recon_worker.isRunning():
            return
        if self.field_worker is not None and self.field_worker.isRunning():
            return
        if self._engine_loading(self.start_reconstruction):
            return
        try:
            settings = self.recon_panel.settings()
        except UafpError as error:
            self.error("Invalid reconstruction settings", error)
            return
        mode = self.recon_panel.mode()
        if mode == "tiles":
            self.start_full_field(settings)
            return
        job = self.recon_job
        if job is None or job.iterations_done == 0:  # nothing made yet: a new run, with the settings shown
            if self.dataset is None:
                self.error("Nothing to reconstruct", ConfigError(
                    "acquire a dataset (Acquisition panel) or open one (File > Open) first"))
                return
            dataset = self.dataset
            if mode == "region":
                x, y, width, height = self.recon_panel.region()
                try:
                    dataset = crop_region(self.dataset, y, x, height, width)
                except UafpError as error:
                    self.error("Invalid region", error)
                    return
            job = LiveReconstruction(
                settings, dataset=dataset, calibration=self.calibration, torch_threads=threads_beside_a_ui()
            )
            job.autosave_folder = self.autosave_folder(self.dataset.path)
            self._set_recon_job(job)
        self._run_recon(job, settings.iterations)

    def _run_recon(self, job: LiveReconstruction, iterations: int | None) -> None:
        worker = GeneratorWorker(lambda: job.run(iterations), name="uafp-reconstruction", on_stop=job.stop,
                                 background=True, parent=self)
        worker.failed.connect(lambda error: self.error("Reconstruction failed", error))
        worker.ended.connect(self._recon_ended)
        self.recon_worker = worker
        self.recon_panel.set_running(True, has_state=job.iterations_done > 0)
        self.recon_panel.show_status("Starting the reconstruction...")
        worker.start()

    def stop_reconstruction(self) -> None:
        for worker in (self.recon_worker, self.field_worker):
            if worker is not None and worker.isRunning():
                worker.stop()
                self.recon_panel.set_stopping()

    # ------------------------------------------------------------------ the full field, in tiles
    def start_full_field(self, settings: UafpSettings) -> None:
        """Reconstruct the opened dataset's whole field in tiles on worker processes (or a Dask cluster):
        the mosaic fills tile by tile, then the stitched field and its aberration map are shown."""
        if self.dataset is None or self.dataset.path is None:
            self.error("Nothing to reconstruct", ConfigError(
                "the full field runs from a dataset file: open one (File > Open), or acquire one to a file first"))
            return
        options = self.recon_panel.tile_options()
        if options["workers"] is None and options["scheduler"] is None:
            options["workers"] = local_workers_beside_a_ui()
        fallback = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.AppLocalDataLocation)
        out = full_field_folder_for(self.dataset.path, Path(fallback or Path.home() / ".uafp"))
        try:
            job = FullFieldJob(self.dataset.path, settings, calibration=self.calibration, out_folder=out, **options)
        except UafpError as error:
            self.error("Invalid full-field settings", error)
            return
        self.field_job = job
        self.mosaic = MosaicCanvas(job.info.frame_shape, settings.upsample)
        self.recon_panel.clear(f"Full field: {job.description}")
        worker = GeneratorWorker(job.run, name="uafp-fullfield", keep_all=True, on_stop=job.stop, parent=self)
        worker.failed.connect(lambda error: self.error("Full-field reconstruction failed", error))
        worker.ended.connect(self._field_ended)
        self.field_worker = worker
        self.recon_panel.set_running(True, has_state=False)
        self.recon_panel.show_status(f"Starting: {job.description}...")
        worker.start()

    def _draw_field(self) -> None:
        worker, mosaic, job = self.field_worker, self.mosaic, self.field_job
        if worker is None or mosaic is None or job is None:
            return
        updates = worker.take()
        if not updates:
            return
        for update in updates:
            if update.result is not None:
                mosaic.paste(update.result)
        last = updates[-1]
        stage = {"calibration": "calibration tiles", "tiles": "tiles"}.get(last.stage, last.stage)
        progress = f"Full field: {stage} {last.done} of {last.total}" + (f" · {last.message}" if last.message else "")
        self.recon_panel.show_mosaic(mosaic.amplitude, mosaic.phase, progress,
                                     f"{len(mosaic.tiles_done)} tiles on screen · {job.description}")

    def _field_ended(self) -> None:
        self._draw_field()
        job = self.field_job
        self.recon_panel.set_running(False, has_state=False)
        if job is None:
            return
        if job.result is not None:
            result, step = job.result, self.mosaic.step if self.mosaic is not None else 1
            self.recon_panel.show_mosaic(
                result.amplitude[::step, ::step], result.phase[::step, ::step],
                f"Full field: {len(result.tiles)} tiles stitched, {result.amplitude.shape[1]} x "
                f"{result.amplitude.shape[0]} px at {result.pixel_um:.3g} um",
                f"written to {job.written}" if job.written else "",
            )
            self.recon_panel.show_aberration_map(result.calibration.get("field_aberrations"))
        elif job.stopped or job.failed_tiles:  # a failure's dialog also says why and what to try
            self._show_partial_field(job)
        if job.write_error is not None:
            self.error("Could not write the full-field result", job.write_error)
        elif job.partial is not None:
            self.status(f"Partial full field ({job.partial.finished} of {job.partial.planned} tiles) written: "
                        f"{job.partial.where_text()}", 60000)
        elif job.written is not None:
            self.status(f"Full field written to {job.written}", 15000)

    def _show_partial_field(self, job: FullFieldJob) -> None:
        """A stopped or incomplete full field: how many tiles finished, which are missing and why, and where
        the partial mosaic (NaN in its holes) was written (its folder on the panel's two-line status, its
        path on the window's status bar); the whole account in the status's tooltip."""
        how = "stopped" if job.stopped else "incomplete"
        summary = job.partial
        if summary is not None:
            self.recon_panel.show_status(f"Full field {how}: {summary.finished} of {summary.planned} tiles, "
                                         f"{summary.missing_text(count=False)}.", summary.short_where_text())
            self.recon_panel.status.setToolTip(f"Full field {how}: {summary.text()}")
            used = len((job.partial_aberrations or {}).get("partial", {}).get("tiles_used", ()))
            self.recon_panel.show_aberration_map(job.partial_aberrations,
                                                 f"partial: {used} of {summary.planned} tiles")
            return
        if job.written is not None:  # written, but its tiles.json could not be read back
            where = f"the {len(job.finished_tiles)} finished tiles are in {job.written}"
        elif job.finished_tiles and job.write_error is not None:  # its own error dialog says why
            where = f"the {len(job.finished_tiles)} finished tiles could not be written"
        else:
            where = "no tile finished; nothing written"
        self.recon_panel.show_status(f"Full field {how}: {where}.", "")

    @staticmethod
    def autosave_folder(dataset_path: Path | None) -> Path:
        """Where every ending of a reconstruction writes its last good state (`LiveReconstruction.autosave_folder`)."""
        fallback = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.AppLocalDataLocation)
        return autosave_folder_for(dataset_path, Path(fallback or Path.home() / ".uafp") / "autosave")

    @property
    def reconstruction_settled(self) -> bool:
        """No reconstruction runs and the window has handled the last one's end (views, status,
        Stop/Continue): what a test or a script waits for, rather than a fixed time."""
        worker = self.recon_worker
        return worker is None or (worker.isFinished() and self._recon_ended_worker is worker)

    def _recon_ended(self) -> None:
        worker = self.recon_worker  # the one that ended: a new one starts only after its `ended` was posted
        try:
            self._handle_recon_end()
        finally:
            self._recon_ended_worker = worker

    def _handle_recon_end(self) -> None:
        self._draw_recon()
        self.recon_panel.flush()
        job = self.recon_job
        done = job.iterations_done if job is not None else 0
        self.recon_panel.set_running(False, has_state=done > 0)
        if job is None or job.recon is None:
            return
        recon = job.recon
        more = self.recon_panel.iterations_to_run()  # the autosave path is in the status bar: two short lines here
        if done == 0:  # stopped (or failed) before the first iteration: nothing to show, export or continue
            self.recon_panel.show_status("Stopped before the first iteration: no reconstruction yet. Press "
                                         "Reconstruct to start again.", "")
        elif not recon.partial and (recon.iteration >= job.run_target or recon.stop_reason is StopReason.CONVERGED):
            how = "Converged after" if recon.stop_reason is StopReason.CONVERGED else "Finished:"
            self.recon_panel.show_status(f"{how} {done} iterations, {format_duration(recon.elapsed_s)}. "
                                         f"Continue runs {more} more.")
        else:
            why = f"PARTIAL: {recon.stop_reason}" if recon.partial else (recon.stop_reason or "stopped")
            self.recon_panel.show_status(f"Stopped at iteration {done} of {job.run_target} ({why}). "
                                         f"Continue runs {more} more.")
        if job.last_result is not None:
            self.recon_panel.show_calibration(job.last_result.calibration())
        if job.autosave_error is not None:
            self.error("Could not save the reconstruction's last state", job.autosave_error)
        elif job.autosaved is not None:
            kind = f"partial ({recon.stop_reason})" if recon.partial else "complete"
            self.status(f"Reconstruction {kind}: its last good state is saved in {job.autosaved}", 15000)

    def _draw_recon(self) -> None:
        if self.recon_worker is None:
            return
        job = self.recon_job
        update, fresh = self.recon_worker.latest()
        if not fresh or update is None:
            self.recon_panel.flush()  # the plots of the update drawn on the previous tick
            if job is not None and self.recon_worker.isRunning() and not self.recon_worker.stopping:
                self.recon_panel.show_status(progress_text(job))
            return
        # Images now, plots on the next tick: each repaint stays short.
        progress = progress_text(job) if job is not None else None
        self.recon_panel.show_update(update, list(job.history) if job else (), defer_plots=True, progress=progress)
        self.led_map.set_geometry(update.geometry)
        self.recon_panel.set_arrow_magnify(self.led_map.magnify)

    # ------------------------------------------------------------------ refresh (timer)
    def refresh(self) -> None:
        self._drain_acquisition()
        self._draw_recon()
        self._draw_field()
        if self.live_worker is not None:
            preview, fresh = self.live_worker.latest()
            if fresh and preview is not None:
                self.live_view.show_preview(preview, "live")

    # ------------------------------------------------------------------ export, calibration
    def _idle_job(self, title: str) -> LiveReconstruction | None:
        if self.recon_worker is not None and self.recon_worker.isRunning():
            self.error(title, ConfigError("the reconstruction is still running: press Stop (or wait for it) first"))
            return None
        job = self.recon_job
        if job is None or job.recon is None or job.iterations_done == 0 or job.recon.object is None:
            self.error(title, ConfigError("there is no reconstruction yet: acquire or open a dataset and reconstruct"))
            return None
        return job

    def export_result(self, folder: Path) -> None:
        job = self._idle_job("Cannot export")
        if job is None:
            return
        self.export_panel.show_status(f"Exporting to {folder}...")

        def done(path: Path) -> None:
            self.last_export = path
            self.export_panel.show_status(f"Exported to {path}")
            self.status(f"Result written to {path}")
            self._add_recent(path)

        def failed(error: BaseException) -> None:
            self.export_panel.show_status("Export failed")
            self.error("Export failed", error)

        self.io.submit(lambda: job.export(folder), done, failed)

    def save_calibration(self, path: Path) -> None:
        job = self._idle_job("Cannot save the calibration")
        if job is None:
            return
        from uafp_gui.io.calibration import save_calibration

        self.io.submit(lambda: save_calibration(path, job.result().calibration()),
                       lambda saved: self.status(f"Calibration saved to {saved}"),
                       lambda error: self.error("Cannot save the calibration", error))

    def load_calibration(self, path: Path) -> None:
        from uafp_gui.io.calibration import load_calibration

        def done(calibration: Any) -> None:
            self.calibration = calibration
            g = calibration.led_geometry
            self.export_panel.show_calibration(
                f"{path.name}: shift ({g.shift_x_mm:+.2f}, {g.shift_y_mm:+.2f}) mm, rotation {g.rotation_deg:+.2f} "
                f"deg, height {g.height_mm:.1f} mm; the next reconstruction starts from it"
            )
            self.led_map.set_geometry(g)

        self.io.submit(lambda: load_calibration(path), done, lambda error: self.error("Cannot load calibration", error))

    def clear_calibration(self) -> None:
        self.calibration = None
        self.export_panel.show_calibration("No calibration loaded")
        self.led_map.set_geometry(None)

    # ------------------------------------------------------------------ opening files
    def open_path(self, path: Path) -> None:
        path = Path(path)
        if self.recon_worker is not None and self.recon_worker.isRunning():
            self.error("Cannot open", ConfigError("a reconstruction is running: stop it first"))
            return
        full_scale = self.live_view.full_scale
        kind = ["dataset"]  # what the path turned out to be (set on the io thread, read after it)

        def read() -> tuple:  # io thread: whatever needs the disk or a full-size array happens here
            if path.is_dir():
                kind[0] = "result"
                from uafp_gui.io.result import read_result

                result = read_result(path)
                return "result", result, ReconPanel.result_spectrum(result.object_field)
            from uafp_gui.io.dataset import read_dataset

            dataset = read_dataset(path)
            clipped_at = dataset_full_scale(dataset.meta)  # the camera's, when the dataset records its bit depth
            thumbnails = [frame_thumbnail(frame, full_scale=clipped_at) for frame in dataset.frames[:MAX_THUMBNAILS]]
            return "dataset", dataset, thumbnails, frame_preview(dataset.frames[0], int(clipped_at or full_scale))

        def opened(content: tuple) -> None:
            if content[0] == "result":
                self._show_result(path, *content[1:])
            else:
                self._show_dataset(path, *content[1:])

        self.io.submit(read, opened, lambda error: self.error(f"Cannot open the {kind[0]}", error))

    def _show_result(self, path: Path, result: Any, spectrum: np.ndarray) -> None:
        """Show an opened result folder, and nothing of what was open before: the previous dataset's
        frames and reconstruction leave the views (the result on disk is what Export would give)."""
        self._set_recon_job(None)
        self.recon_worker = None
        self.dataset = None
        self.recon_panel.set_running(False, has_state=False)
        self.acquisition_panel.reset_progress(0)
        self.live_view.clear(f"{path.name}: a result folder (no raw frames)")
        self.led_map.set_geometry(result.calibration.led_geometry)
        self.recon_panel.show_result(result, spectrum, arrow_magnify=self.led_map.magnify)
        self._add_recent(path)
        self.status(f"Opened result {path}" + (f" (from {result.calibration.source_dataset})"
                                              if result.calibration.source_dataset else ""))

    def _show_dataset(self, path: Path, dataset: Any, thumbnails: list[np.ndarray], preview: Any) -> None:
        from uafp_gui.acquisition.plan import MicroscopeDescription

        self.dataset = dataset
        self._set_recon_job(None)
        self.recon_worker = None
        self.recon_panel.set_running(False, has_state=False)
        self.recon_panel.clear(f"No reconstruction of {path.name} yet: press Reconstruct")
        meta = dataset.meta
        self.recon_panel.led_pitch_mm = meta.led_pitch_mm
        try:
            microscope = MicroscopeDescription(optics=meta.optics)
            self.led_map.set_microscope(microscope)
            self.led_map.set_planned([led for frame in meta.frames for led in frame.leds])
            self.led_map.set_geometry(None)
        except UafpError:
            pass
        panel = self.acquisition_panel
        panel.reset_progress(len(dataset.frames))
        for index, thumbnail in enumerate(thumbnails):
            panel.queue_thumbnail(index, thumbnail, meta.frames[index].leds)
        panel.add_queued_thumbnails(MAX_THUMBNAILS)  # made on the io thread: adding them is cheap
        panel.show_all_done(len(dataset.frames))
        self.live_view.show_preview(preview, f"{path.name}, frame 0")
        self._add_recent(path)
        self.status(f"Opened {path}: {len(dataset.frames)} frames of {dataset.frames.shape[1]}x"
                    f"{dataset.frames.shape[2]}; press Reconstruct")

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:  # noqa: N802 - Qt API
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:  # noqa: N802 - Qt API
        paths = [Path(url.toLocalFile()) for url in event.mimeData().urls() if url.isLocalFile()]
        if paths:
            event.acceptProposedAction()
            self.open_path(paths[0])

    # ------------------------------------------------------------------ settings
    def _add_recent(self, path: Path) -> None:
        text = str(Path(path).absolute())  # no resolve(): the UI thread does not touch the disk
        recent = [text] + [p for p in self._recent() if p != text]
        self.settings.setValue("recent_files", recent[:MAX_RECENT])
        self._show_recent()

    def _recent(self) -> list[str]:
        value = self.settings.value("recent_files", [])
        if isinstance(value, str):
            value = [value]
        return [str(v) for v in value] if isinstance(value, list) else []

    def _show_recent(self) -> None:
        recent = self._recent()
        self.export_panel.set_recent(recent)
        self.recent_menu.clear()
        for text in recent:
            action = self.recent_menu.addAction(text)
            action.triggered.connect(lambda _=False, p=text: self.open_path(Path(p)))

    def _restore_settings(self) -> None:
        s = self.settings
        geometry = s.value("window/geometry")
        if isinstance(geometry, QByteArray):
            self.restoreGeometry(geometry)
        else:
            self.resize(1500, 950)
        state = s.value("window/state")
        if isinstance(state, QByteArray):
            self.restoreState(state, STATE_VERSION)
        else:  # first start: the reconstruction gets the middle, the docks what they need
            self.resizeDocks([self.docks["acquisition"], self.docks["ledmap"]], [DOCK_WIDTH_PX, DOCK_WIDTH_PX],
                             Qt.Orientation.Horizontal)
        for panel in (self.acquisition_panel, self.devices_panel, self.export_panel):
            panel.restore_settings(s)
        self.recon_panel.scheduler.setText(str(s.value("fullfield/scheduler", "") or ""))
        self._show_recent()

    def _save_settings(self) -> None:
        s = self.settings
        s.setValue("window/geometry", self.saveGeometry())
        s.setValue("window/state", self.saveState(STATE_VERSION))
        for panel in (self.acquisition_panel, self.devices_panel, self.export_panel):
            panel.save_settings(s)
        s.setValue("fullfield/scheduler", self.recon_panel.scheduler.text().strip())
        s.sync()

    # ------------------------------------------------------------------ shutdown
    def _stop_worker(self, worker: GeneratorWorker | None, wait_ms: int = 30000) -> None:
        if worker is None or not worker.isRunning():
            return
        worker.stop()
        worker.wait(wait_ms)

    def shutdown(self) -> None:
        """Quit within about a second whatever runs: ask every job to stop, wait (bounded) for
        them, then mute every worker so none can emit into a widget being destroyed; a job still
        running (it stops at its next check) is detached, never destroyed while it runs. The
        acquisition keeps what it wrote; the devices are closed; the settings are saved."""
        if self._closing:
            return
        self._closing = True
        self.timer.stop()
        workers = [w for w in (self.acq_worker, self.recon_worker, self.field_worker, self.live_worker)
                   if w is not None]
        for worker in workers:
            if worker.isRunning():
                worker.stop()
        deadline = time.monotonic() + QUIT_WAIT_S
        for worker in workers:
            worker.wait(max(0, int((deadline - time.monotonic()) * 1000)))
        for worker in workers:
            if worker.isRunning():
                worker.detach()
            else:
                worker.mute()
        led_array = self.led_array
        self.core = self.led_array = None
        if led_array is not None:
            self.devices.submit(led_array.close)
        for runner in (self.io, self.devices, self.engine_loader):  # the loader: torch may still be loading
            runner.mute()
            runner.shutdown(timeout_s=max(0.2, deadline - time.monotonic()))
        self._save_settings()

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 - Qt API
        self.shutdown()
        super().closeEvent(event)
