"""`uafp led ...`: talk to the LED array from the command line (check wiring, light LEDs)."""

from __future__ import annotations

import argparse
import json

from uafp_gui.cli.options import finite_float, whole_number
from uafp_gui.devices.illuminate import IlluminateLedArray
from uafp_gui.devices.interfaces import Orientation
from uafp_gui.errors import ConfigError
from uafp_gui.simulated.led_array import SimulatedLedArray

_DESCRIPTION = """\
Drive an LED array that speaks the illuminate command set (the uafp-led firmware in
hardware/firmware/, or an existing illuminate array) over its serial port.

  uafp led --port auto about          find the array by probing every serial port
  uafp led --port /dev/ttyACM0 light 7 7      light the LED at image row 7, col 7
  uafp led --port auto light 7 7 7 8  light several LEDs (row col pairs)
  uafp led --simulate light 7 7       no hardware: the Python model of the firmware
  uafp led --port auto raw pvals      send one raw protocol line, print the reply

Rows and columns are image axes: --flip-rows/--flip-cols/--transpose map the array's
wiring into them (hardware/README.md explains how to find the right flags).
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "led",
        help="LED array: about, light ROW COL, clear, brightness, raw commands",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--port", default="auto", help="serial port or 'auto' (default)")
    where.add_argument("--simulate", action="store_true", help="use the simulated LED array")
    parser.add_argument(
        "--shape",
        type=whole_number,
        nargs=2,
        metavar=("ROWS", "COLS"),
        default=None,
        help="array shape, for --simulate or firmware that does not report it",
    )
    parser.add_argument("--pitch-mm", type=finite_float, default=None, help="override the LED pitch")
    parser.add_argument("--flip-rows", action="store_true")
    parser.add_argument("--flip-cols", action="store_true")
    parser.add_argument("--transpose", action="store_true")
    parser.add_argument("--timeout-s", type=finite_float, default=2.0, help="reply timeout (2 s)")
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.add_parser("about", help="print the firmware's about line and properties")
    light = actions.add_parser("light", help="light LEDs given as ROW COL [ROW COL ...]")
    light.add_argument("rowcol", type=whole_number, nargs="+", metavar="N")
    actions.add_parser("clear", help="switch every LED off")
    actions.add_parser("fill", help="switch every LED on")
    actions.add_parser("bf", help="bright-field pattern for the NA set on the array")
    actions.add_parser("df", help="dark-field pattern for the NA set on the array")
    brightness = actions.add_parser("brightness", help="brightness 0-255 (one value or R G B)")
    brightness.add_argument("values", type=whole_number, nargs="+")
    color = actions.add_parser("color", help="colour R G B, 0-255 each")
    color.add_argument("rgb", type=whole_number, nargs=3)
    actions.add_parser("trigger", help="pulse the trigger output once")
    raw = actions.add_parser("raw", help="send one protocol line and print the reply")
    raw.add_argument("line")
    parser.set_defaults(func=run)


def _open(args: argparse.Namespace) -> IlluminateLedArray:
    orientation = Orientation(args.flip_rows, args.flip_cols, args.transpose)
    if args.simulate:
        shape = tuple(args.shape) if args.shape else (32, 32)
        return SimulatedLedArray(
            shape=shape,
            pitch_mm=args.pitch_mm or 4.0,
            orientation=orientation,
        )
    return IlluminateLedArray(
        args.port,
        orientation=orientation,
        pitch_mm=args.pitch_mm,
        shape=tuple(args.shape) if args.shape else None,
        timeout_s=args.timeout_s,
        clear_on_close=False,  # `uafp led light 7 7` leaves the LED on
    )


def run(args: argparse.Namespace) -> int:
    if not args.action:
        raise ConfigError("uafp led needs an action: about, light, clear, fill, ... (see --help)")
    leds = _open(args)
    with leds:
        if args.action == "about":
            print(leds.about())
            print(f"port: {leds.port}")
            print(json.dumps(leds.properties.raw, indent=1))
        elif args.action == "light":
            if len(args.rowcol) % 2:
                raise ConfigError("light takes ROW COL pairs, e.g. `uafp led light 7 7`")
            pairs = list(zip(args.rowcol[::2], args.rowcol[1::2], strict=True))
            leds.light(pairs)
            print("lit: " + " ".join(f"({r},{c})" for r, c in sorted(leds.lit)))
        elif args.action == "clear":
            leds.clear()
        elif args.action == "fill":
            leds.fill()
        elif args.action == "bf":
            leds.brightfield()
        elif args.action == "df":
            leds.darkfield()
        elif args.action == "brightness":
            leds.set_brightness(args.values[0] if len(args.values) == 1 else tuple(args.values))
        elif args.action == "color":
            leds.set_color(*args.rgb)
        elif args.action == "trigger":
            leds.trigger()
        elif args.action == "raw":
            for line in leds.connection.transact(args.line):
                print(line)
    return 0
