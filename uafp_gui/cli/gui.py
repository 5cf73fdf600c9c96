"""`uafp gui`: start the desktop app (the same as `uafp-gui`).

The GUI package is imported by name at run time, so the CLI layer itself never imports Qt.
"""

from __future__ import annotations

import importlib

from uafp_gui.cli.options import whole_number


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "gui",
        help="start the desktop app (simulated microscope when no hardware is found)",
        description="Start the desktop app: devices, LED map, live view, acquisition, live UA-FP "
        "reconstruction and export. Runs on the simulated microscope when no LED array is found.",
    )
    parser.add_argument("--no-probe", action="store_true", help="do not look for an LED array at start-up")
    parser.add_argument("--preset", default="misaligned", help="simulated microscope preset (default misaligned)")
    parser.add_argument("--frame-size", type=whole_number, default=None, help="simulated camera frame size in pixels")
    parser.add_argument("--settings", default=None, help="settings file (.ini) instead of the user's")
    parser.add_argument("--open", default=None, dest="open_path", help="dataset or result to open")
    parser.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    app = importlib.import_module("uafp_gui.gui.app")  # Qt is loaded only when the GUI starts
    args.settings = Path(args.settings) if args.settings else None
    args.open_path = Path(args.open_path) if args.open_path else None
    return app.run(args)
