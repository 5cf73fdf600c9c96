"""`uafp acquire`: acquire an FP dataset with a real or simulated microscope, streaming to disk.

    uafp acquire --simulate --out run.tif --leds 15x15
    uafp acquire --mm-config MyScope.cfg --led-port auto --out run.tif --leds disk:0.35 \
        --wavelength-um 0.52 --objective-na 0.1 --magnification 4 --camera-pixel-um 3.45 \
        --led-height-mm 80
    uafp acquire --simulate --out run.tif --resume          # after an interruption
    uafp acquire --simulate --out run.tif --reconstruct     # UA-FP live, result when done
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Any

from uafp_gui.cli.options import finite_float, whole_number
from uafp_gui.errors import ConfigError

SIMULATION_KEY = "simulated_microscope"  # the hidden truth of a simulated run, kept in the dataset


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "acquire",
        help="acquire a dataset (Micro-Manager camera + LED array, or the simulated microscope)",
        description="Acquire an FP dataset frame by frame; every frame is on disk the moment it arrives, "
        "so an interrupted run keeps its frames and --resume completes it. Without --mm-config the "
        "simulated FP microscope is used.",
    )
    parser.add_argument("--out", type=Path, required=True, help="dataset to write, e.g. run.tif")
    source = parser.add_argument_group("microscope")
    source.add_argument("--simulate", action="store_true", help="use the simulated FP microscope (the default "
                        "without --mm-config)")
    source.add_argument("--preset", default="misaligned", help="simulated microscope preset (default misaligned)")
    source.add_argument("--seed", type=whole_number, default=None,
                        help="simulated microscope: noise and brightness seed")
    source.add_argument("--sim-no-wait", action="store_true",
                        help="simulated camera: do not wait out the exposure time (faster than real time)")
    source.add_argument("--mm-config", type=Path, default=None, help="Micro-Manager configuration (.cfg) with "
                        "your camera (see hardware/micro-manager/)")
    source.add_argument("--mm-path", default=None, help="Micro-Manager folder (default MICROMANAGER_PATH or the "
                        "one `mmcore install` put in place)")
    source.add_argument("--led-port", default=None, help="LED array serial port, or auto (required with "
                        "--mm-config; with --simulate a real LED array can be used with the simulated camera)")
    source.add_argument("--led-flip-rows", action="store_true", help="LED array mounted with rows flipped")
    source.add_argument("--led-flip-cols", action="store_true", help="LED array mounted with columns flipped")
    source.add_argument("--led-transpose", action="store_true", help="LED array mounted transposed")
    source.add_argument("--microscope", type=Path, default=None, help="microscope description JSON "
                        "(wavelength_um, objective_na, magnification, camera_pixel_um, led_height_mm, ...)")
    for name, kind, text in (
        ("wavelength_um", finite_float, "illumination wavelength"),
        ("objective_na", finite_float, "objective NA"),
        ("magnification", finite_float, "sensor-to-sample magnification"),
        ("camera_pixel_um", finite_float, "camera pixel after binning"),
        ("led_pitch_mm", finite_float, "LED spacing (default: what the LED array reports)"),
        ("led_height_mm", finite_float, "LED-plane-to-sample distance"),
    ):
        source.add_argument("--" + name.replace("_", "-"), type=kind, default=None, help=text)
    source.add_argument("--led-on-axis", type=finite_float, nargs=2, default=None, metavar=("ROW", "COL"),
                        help="LED index on the optical axis (default: the array centre)")
    source.add_argument("--camera-offset", type=finite_float, default=None, help="camera dark level in counts "
                        "(default: the camera's Offset property, or the dark frame)")
    source.add_argument("--camera-timeout-s", type=finite_float, default=10.0, help="seconds beyond the exposure "
                        "before a frame counts as lost (default 10)")

    plan = parser.add_argument_group("plan")
    plan.add_argument("--plan", type=Path, default=None, help="acquisition plan JSON (flags below override it)")
    plan.add_argument("--save-plan", type=Path, default=None, help="write the plan used as JSON")
    plan.add_argument("--leds", default=None, help="NxN (square, default 15x15), disk:NA, list:r,c;r,c or "
                      "list:FILE.json")
    plan.add_argument("--order", choices=["spiral", "na", "as_given"], default=None,
                      help="spiral from the centre (default) or by illumination NA")
    plan.add_argument("--exposure-ms", type=finite_float, default=None, help="bright-field exposure (default 10)")
    plan.add_argument("--darkfield-exposure-ms", type=finite_float, default=None, help="dark-field exposure")
    plan.add_argument("--auto-exposure", action="store_true", default=None,
                      help="meter one LED per NA ring and set each ring's exposure")
    plan.add_argument("--max-exposure-ms", type=finite_float, default=None, help="auto-exposure ceiling")
    plan.add_argument("--dark-frame", action="store_true", default=None,
                      help="take a dark frame first (sets camera_offset; saved as OUT_dark.tif)")
    plan.add_argument("--average", type=whole_number, default=None, help="frames averaged per LED (stored as float32)")
    plan.add_argument("--roi", type=whole_number, nargs=4, default=None, metavar=("X", "Y", "W", "H"),
                      help="camera ROI")
    plan.add_argument("--hardware-triggered", action="store_true", default=None,
                      help="fast mode: load the LED list into the array's firmware sequence and let each exposure "
                      "step it (no serial command per frame). Needs the camera's exposure-end/strobe output wired "
                      "to the Arduino's trigger input D2 (and, for --trigger-wiring closed_loop, the Arduino's "
                      "trigger output D5 to the camera's trigger input, camera in external-trigger mode in your "
                      "Micro-Manager config); see hardware/README.md")
    plan.add_argument("--trigger-wiring", choices=["closed_loop", "strobe"], default=None,  # TriggerWiring
                      help="--hardware-triggered: closed_loop (default; D5 -> camera trigger in, camera strobe -> D2) "
                      "or strobe (free-running camera, strobe -> D2 only)")

    run_group = parser.add_argument_group("run")
    run_group.add_argument("--resume", action="store_true", help="acquire only the frames missing from --out")
    run_group.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    run_group.add_argument("--reconstruct", action="store_true", help="reconstruct (UA-FP) while acquiring; "
                           "writes OUT_result/ when done")
    run_group.add_argument("--iterations", type=whole_number, default=None, help="--reconstruct: final iterations")
    run_group.add_argument("--device", default="auto", help="--reconstruct: auto, cpu or cuda")
    parser.set_defaults(func=run)


# ------------------------------------------------------------------------------ settings


def simulation_settings(args: argparse.Namespace, stored: dict[str, Any] | None):
    from uafp_gui.simulate import PRESETS, SimulationSettings

    if stored is not None:  # resume: the same hidden microscope as the interrupted run
        return SimulationSettings.from_dict(stored)
    if args.preset not in PRESETS:
        raise ConfigError(f"--preset {args.preset!r}: choose one of {sorted(PRESETS)}")
    settings = PRESETS[args.preset]
    if args.seed is not None:
        settings = settings.replace(seed=args.seed)
    return settings


def build_plan(args: argparse.Namespace):
    from uafp_gui.acquisition.plan import AcquisitionPlan, parse_led_set

    base = AcquisitionPlan.load(args.plan).to_dict() if args.plan else {}
    if args.leds is not None or not base:
        base.update(parse_led_set(args.leds or "15x15"))
    for flag, key in (
        ("order", "order"),
        ("exposure_ms", "brightfield_exposure_ms"),
        ("darkfield_exposure_ms", "darkfield_exposure_ms"),
        ("auto_exposure", "auto_exposure"),
        ("max_exposure_ms", "max_exposure_ms"),
        ("dark_frame", "dark_frame"),
        ("average", "frames_to_average"),
        ("roi", "roi"),
        ("hardware_triggered", "hardware_triggered"),
    ):
        value = getattr(args, flag)
        if value is not None:
            base[key] = value
    return AcquisitionPlan.from_dict(base)


def build_microscope(args: argparse.Namespace, led_array, simulation):
    from uafp_gui.acquisition.plan import MicroscopeDescription
    from uafp_gui.model import OPTICS_FIELDS

    values: dict[str, Any] = {}
    if simulation is not None:
        values = MicroscopeDescription.from_simulation(simulation).to_dict()
    if args.microscope is not None:
        from uafp_gui.io.jsontext import parse_json

        try:
            described = parse_json(args.microscope.read_bytes(), f"--microscope {args.microscope}", ConfigError)
        except OSError as error:
            raise ConfigError(f"cannot read --microscope {args.microscope}: {error.strerror or error}") from None
        if not isinstance(described, dict):
            raise ConfigError(f"--microscope {args.microscope} must hold one JSON object of microscope fields")
        values.update(described)
    if led_array is not None:
        values["led_array_shape"] = list(led_array.shape)
        if "led_pitch_mm" not in values:
            values["led_pitch_mm"] = led_array.pitch_mm
        if "led_on_axis" not in values:
            rows, cols = led_array.shape
            values["led_on_axis"] = [(rows - 1) / 2, (cols - 1) / 2]
    for name in ("wavelength_um", "objective_na", "magnification", "camera_pixel_um", "led_pitch_mm", "led_height_mm"):
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    if args.led_on_axis is not None:
        values["led_on_axis"] = list(args.led_on_axis)
    required = ("wavelength_um", "objective_na", "magnification", "camera_pixel_um", "led_height_mm")
    missing = [name for name in required if name not in values]
    if missing:
        flags = ", ".join("--" + name.replace("_", "-") for name in missing)
        raise ConfigError(f"describe the microscope: {flags} (or --microscope FILE.json) are required")
    known = {*OPTICS_FIELDS, "glass", "sample"}
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"--microscope has unknown fields {sorted(unknown)}; known: {sorted(known)}")
    return MicroscopeDescription.from_dict(values)


def triggering(args: argparse.Namespace, stored_meta) -> tuple[bool, str]:
    """(hardware-triggered?, trigger wiring): the flags, or what a resumed dataset recorded."""
    stored = stored_meta.extra if stored_meta is not None else {}
    hardware = bool(args.hardware_triggered or stored.get("acquisition_plan", {}).get("hardware_triggered"))
    wiring = args.trigger_wiring or stored.get("hardware_trigger", {}).get("wiring") or "closed_loop"
    return hardware, wiring


def microscope_choice(args: argparse.Namespace):
    """The `MicroscopeChoice` the flags name: without --mm-config the simulated microscope's camera."""
    from uafp_gui.devices.interfaces import Orientation
    from uafp_gui.session.microscope import MicroscopeChoice

    return MicroscopeChoice(
        led_port=args.led_port,
        mm_config=args.mm_config,
        orientation=Orientation(args.led_flip_rows, args.led_flip_cols, args.led_transpose),
        mm_path=args.mm_path,
        realtime=not args.sim_no_wait,
    )


def show_reconstruction_progress(live, progress) -> None:
    """Show the live reconstruction's final iterations (and a start search still due then) on
    `progress`; while frames arrive the acquisition's bar is the one shown."""

    def on_phase(phase: str, done: int, total: int) -> None:
        if not live.acquiring.is_set():
            progress.on_phase(phase, done, total)

    def on_update(update) -> None:
        if live.acquiring.is_set():
            return
        if progress.bar is None or progress.phase != progress.description:
            progress.iterations = live.run_target - live.run_first_iteration
        progress.iteration(update)

    live.on_phase, live.on_update = on_phase, on_update


# ---------------------------------------------------------------------------------- run


def run(args: argparse.Namespace) -> int:
    # Arguments and paths first: devices and the engine load only once they are good.
    if args.simulate and args.mm_config is not None:
        raise ConfigError("--simulate and --mm-config exclude each other")
    if args.out.is_dir():
        raise ConfigError(f"--out {args.out} is a folder: give a .tif file name")
    if not args.out.parent.is_dir():
        raise ConfigError(f"cannot write {args.out}: no folder {args.out.parent}; create it or choose another --out")
    if args.mm_config is not None and not args.mm_config.is_file():
        raise ConfigError(f"--mm-config {args.mm_config} does not exist: check the path")
    from uafp_gui.acquisition.events import (
        AcquisitionFinished,
        AcquisitionPaused,
        AcquisitionStarted,
        FinishReason,
        FrameAcquired,
    )
    from uafp_gui.acquisition.mda_engine import TriggerWiring
    from uafp_gui.acquisition.prepare import check_output_path
    from uafp_gui.acquisition.runner import Acquisition, describe_ring_exposures
    from uafp_gui.cli.progress import progress_bar
    from uafp_gui.io.dataset import read_dataset_meta
    from uafp_gui.session.acquisition import AcquisitionSession
    from uafp_gui.session.microscope import open_microscope

    check_output_path(args.out, args.resume)  # before any device is opened or the camera runs
    stored_meta = None
    if args.resume and args.out.exists():
        stored_meta = read_dataset_meta(args.out)
    simulate = args.mm_config is None
    if simulate and not args.simulate:
        print("uafp acquire: no --mm-config given: using the simulated FP microscope", file=sys.stderr)

    if not simulate and args.led_port is None:
        raise ConfigError("--mm-config needs --led-port PORT (or --led-port auto)")
    simulation = None  # with hardware, the flags (or --microscope) describe the microscope
    if simulate:
        simulation = simulation_settings(args, stored_meta.extra.get(SIMULATION_KEY) if stored_meta else None)
    opened = open_microscope(microscope_choice(args), simulation)
    core, led_array = opened.core, opened.led_array
    hardware_triggered, trigger_wiring = triggering(args, stored_meta)
    if hardware_triggered and trigger_wiring == TriggerWiring.CLOSED_LOOP:
        from uafp_gui.simulated.microscope import simulated_camera

        camera = simulated_camera(core)
        if camera is not None and camera.trigger_in_count is not None:  # what a real config sets
            core.setProperty(core.getCameraDevice(), "TriggerMode", "External")

    plan = microscope = None
    if stored_meta is None:
        plan = build_plan(args)
        microscope = build_microscope(args, led_array, simulation)
        if args.save_plan:
            plan.save(args.save_plan)
    extra = {SIMULATION_KEY: simulation.to_dict()} if simulation is not None and stored_meta is None else {}
    acquisition = Acquisition(
        core,
        led_array,
        plan,
        args.out,
        microscope,
        resume=args.resume,
        overwrite=args.overwrite,
        camera_offset=args.camera_offset,
        camera_timeout_s=args.camera_timeout_s,
        notes="acquired by uafp acquire" + (" (simulated microscope)" if simulate else ""),
        extra_meta=extra,
        trigger_wiring=trigger_wiring,
    )
    live = recon_progress = None
    if args.reconstruct:
        from uafp_gui.cli.progress import PhaseProgress
        from uafp_gui.recon.uafp import UafpSettings
        from uafp_gui.session.reconstruction import LiveReconstruction

        live = LiveReconstruction(UafpSettings(device=args.device))
        recon_progress = PhaseProgress(0)
        show_reconstruction_progress(live, recon_progress)
    session = AcquisitionSession(acquisition, live)
    if live is not None:
        live.start_thread(args.iterations)

    # SIGTERM (e.g. `timeout`, a job scheduler) stops at the next frame like Ctrl-C.
    previous = signal.signal(signal.SIGTERM, lambda *_: session.cancel())
    bar = None
    finished = None
    try:
        for event in session.events():
            if isinstance(event, AcquisitionStarted):
                if event.frames_present:
                    print(f"resuming {event.path}: {event.frames_present} of {event.total} frames present",
                          file=sys.stderr)
                exposures = describe_ring_exposures(acquisition.ring_exposures_ms)
                if exposures:
                    print(f"auto exposure: {exposures}", file=sys.stderr)
                bar = progress_bar(event.total, "acquire", "frame")
                bar.update(event.frames_present)
            elif isinstance(event, FrameAcquired):
                assert bar is not None  # AcquisitionStarted comes first
                bar.update(1)
                if event.saturated_pixels:  # per frame, above the bar: clipped pixels are lost data
                    bar.write(
                        f"uafp acquire: warning: frame {event.index} (LEDs {[list(led) for led in event.spec.leds]}): "
                        f"{event.saturated_pixels} pixels ({100 * event.saturated_fraction:.1f} %) saturated",
                        file=sys.stderr,
                    )
            elif isinstance(event, AcquisitionPaused) and bar is not None:
                bar.set_postfix_str("paused")
            elif isinstance(event, AcquisitionFinished):
                finished = event
    except BaseException:
        session.cancel()
        if live is not None:
            live.stop()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        if bar is not None:
            bar.close()
        try:
            led_array.close()
        except Exception:  # noqa: BLE001 - closing a failed device must not hide the real error
            pass
    assert finished is not None
    overhead = (
        f", {finished.per_frame_overhead_ms:.2f} ms per-frame overhead beyond exposure"
        if finished.per_frame_overhead_ms is not None
        else ""
    )
    print(
        f"acquire: {finished.reason}: {finished.frames_written} of {finished.total} frames in {finished.path} "
        f"({finished.elapsed_s:.1f} s{overhead})"
    )
    if finished.saturated_frames:
        print(f"uafp acquire: warning: {finished.saturation_summary()}", file=sys.stderr)
    if simulation is not None:
        from uafp_gui.simulate import describe

        print(f"simulated microscope (hidden truth): {describe(simulation)}")
    if finished.reason is not FinishReason.COMPLETED:
        if live is not None:
            live.stop()
        print("acquire: run again with --resume to acquire the missing frames", file=sys.stderr)
        return 1
    if live is not None and recon_progress is not None:
        with recon_progress:
            result = live.finish()
        report = live.lag_report()  # after the final iterations: every frame has been used by then
        from types import SimpleNamespace

        from uafp_gui.recon.common import save_result

        out = args.out.with_name(args.out.stem + "_result")
        save_result(result, out, report=True, report_dataset=SimpleNamespace(meta=acquisition.meta))
        geometry = result.geometry
        print(report.describe())
        print(
            f"reconstruct: {result.iterations} iterations ({report.updates} while acquiring, "
            f"{result.iterations - report.updates} after), final loss {result.final_loss:.4g}; LED shift "
            f"({geometry.shift_x_mm:+.3f}, {geometry.shift_y_mm:+.3f}) mm, rotation {geometry.rotation_deg:+.3f} deg, "
            f"height {geometry.height_mm:.2f} mm; wrote {out}/ (with report.png)"
        )
    return 0

