"""`uafp-gui` (and `uafp gui`): start the desktop app.

Opens on the simulated microscope and looks for an LED array in the background; the status
bar says which is in use. Options: `--no-probe` (skip hardware detection), `--preset` and
`--frame-size` (the simulated microscope), `--settings FILE.ini` (a settings file instead of
the user's), `--open PATH` (a dataset or result to open at start).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from dataclasses import replace
from pathlib import Path

__all__ = ["build_parser", "create_window", "main"]


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="uafp-gui", description="uafp desktop app")
    parser.add_argument("--no-probe", action="store_true", help="do not look for an LED array at start-up")
    parser.add_argument("--preset", default="misaligned", help="simulated microscope preset (default misaligned)")
    parser.add_argument("--frame-size", type=int, default=None, help="simulated camera frame size in pixels")
    parser.add_argument("--settings", type=Path, default=None, help="settings file (.ini) instead of the user's")
    parser.add_argument("--open", type=Path, default=None, dest="open_path", help="dataset or result to open")
    return parser


def create_window(args: argparse.Namespace):
    """The main window for parsed `args` (a QApplication must exist)."""
    from PySide6.QtCore import QSettings

    from uafp_gui.errors import ConfigError
    from uafp_gui.gui.main_window import MainWindow
    from uafp_gui.simulate import PRESETS

    if args.preset not in PRESETS:
        raise ConfigError(f"--preset {args.preset!r}: choose one of {sorted(PRESETS)}")
    simulation = PRESETS[args.preset]
    if args.frame_size:
        simulation = replace(simulation, frame_size=int(args.frame_size))
    settings = QSettings(str(args.settings), QSettings.Format.IniFormat) if args.settings else None
    window = MainWindow(settings, simulation=simulation, probe_hardware=not args.no_probe)
    if args.open_path is not None:
        window.open_path(args.open_path)
    return window


def run(args: argparse.Namespace) -> int:
    from uafp_gui.gui.display_check import display_problem

    problem = display_problem()  # before Qt loads: Qt aborts (exit 134) where it cannot open a window
    if problem is not None:
        print(f"uafp-gui: error: {problem}", file=sys.stderr)
        return 2
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setOrganizationName("uafp")
    app.setApplicationName("uafp-gui")
    splash = show_splash()
    window = create_window(args)
    window.show()
    splash.finish(window)
    with closing_on_signals(window):
        code = int(app.exec())
    window.shutdown()  # already done by closeEvent unless the app quit another way
    from uafp_gui.gui.workers import wait_for_detached

    if not wait_for_detached(5.0):  # a job that ignored its stop: leave without destroying its thread
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


@contextlib.contextmanager
def closing_on_signals(window):
    """While the event loop runs, Ctrl-C (SIGINT) or SIGTERM from the terminal closes the window as
    its close button does: a running job stops and a reconstruction keeps its autosaved result, and
    the app exits normally instead of printing a KeyboardInterrupt traceback from inside Qt's loop.

    Python runs signal handlers only between bytecodes, which never happens while Qt's loop waits:
    a timer wakes the interpreter every 200 ms. On leaving, the previous handlers come back, so
    nothing keeps the window alive into the interpreter's shutdown (where its late destruction
    crashed PySide6)."""
    import signal

    from PySide6.QtCore import QTimer

    def close(signum, frame) -> None:
        # From the event loop, not here: a signal that arrives before `app.exec()` runs would close
        # the window before the loop starts, and the loop would then wait forever for a last window.
        QTimer.singleShot(0, window.close)

    numbers = (signal.SIGINT, signal.SIGTERM)
    previous = {number: signal.signal(number, close) for number in numbers}
    timer = QTimer()
    timer.timeout.connect(lambda: None)
    timer.start(200)
    try:
        yield
    finally:
        timer.stop()
        for number, handler in previous.items():
            signal.signal(number, handler)


def show_splash():
    """A small splash on screen at once (Qt alone has loaded), while the plotting library loads
    and the window is built; torch loads later, off the UI thread.

    A plain frameless widget painted synchronously, not a QSplashScreen: QSplashScreen.show()
    blocks for a full second waiting for an expose event that neither Xvfb nor Qt's offscreen
    platform sends it (measured: 1.0 s of every start-up)."""
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QColor, QFont, QPainter, QPixmap
    from PySide6.QtWidgets import QApplication, QWidget

    pixmap = QPixmap(460, 140)
    pixmap.fill(QColor(250, 250, 250))
    painter = QPainter(pixmap)
    painter.setPen(QColor(60, 110, 200))
    painter.drawRect(0, 0, pixmap.width() - 1, pixmap.height() - 1)
    font = QFont()
    font.setPointSize(16)
    font.setBold(True)
    painter.setFont(font)
    painter.setPen(QColor(30, 30, 30))
    painter.drawText(20, 50, "uafp - Fourier ptychographic microscope")
    font.setPointSize(10)
    font.setBold(False)
    painter.setFont(font)
    painter.setPen(QColor(80, 80, 80))
    painter.drawText(20, pixmap.height() - 16, "Starting...")
    painter.end()

    class Splash(QWidget):
        def paintEvent(self, event) -> None:  # noqa: N802 - Qt's name
            QPainter(self).drawPixmap(0, 0, pixmap)

        def finish(self, window) -> None:
            self.close()
            self.deleteLater()

    flags = Qt.WindowType.SplashScreen | Qt.WindowType.FramelessWindowHint | Qt.WindowType.WindowStaysOnTopHint
    splash = Splash(None, flags)
    splash.setFixedSize(pixmap.size())
    screen = QApplication.primaryScreen()
    if screen is not None:
        splash.move(screen.availableGeometry().center() - splash.rect().center())
    splash.show()
    splash.repaint()  # painted now, before the heavy imports hold the event loop
    QApplication.processEvents()
    return splash


def main(argv: list[str] | None = None) -> int:
    from uafp_gui.errors import UafpError

    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except UafpError as error:
        print(f"uafp-gui: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
