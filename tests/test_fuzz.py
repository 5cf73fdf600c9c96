"""Property-based fuzzing (hypothesis) of everything that parses a user's file or a device's reply.

Each property: any input ends in a result or in the layer's typed error (`UafpError` family) -
never another exception, never a hang, never runaway memory. Seeded (`derandomize=True`: the same
inputs every run), bounded (`max_examples`, a per-test timeout), in the slow lane:
`python -m pytest -m slow tests/test_fuzz.py -s` also prints inputs tried, seconds and peak memory.
"""

from __future__ import annotations

import json
import resource
import struct
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from uafp_gui.errors import UafpError

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=300,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)
PER_INPUT_LIMIT_S = 5.0  # one input taking longer than this counts as a hang
MEMORY_LIMIT_MB = 1500  # peak resident memory of the test process


class Tally:
    """Inputs tried, seconds, slowest input and peak memory of one fuzz target (printed with -s)."""

    def __init__(self, name: str) -> None:
        self.name, self.count, self.slowest, self.start = name, 0, 0.0, time.perf_counter()
        self.typed_errors = 0

    def run(self, function, *args):
        started = time.perf_counter()
        try:
            return function(*args)
        except UafpError:
            self.typed_errors += 1
            return None
        finally:
            elapsed = time.perf_counter() - started
            self.count += 1
            self.slowest = max(self.slowest, elapsed)
            assert elapsed < PER_INPUT_LIMIT_S, f"{self.name}: one input took {elapsed:.1f} s (a hang)"

    def report(self) -> None:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"\nfuzz {self.name}: {self.count} inputs, {time.perf_counter() - self.start:.1f} s, "
              f"{self.typed_errors} typed errors, 0 hangs (slowest {self.slowest:.2f} s), "
              f"0 raw tracebacks, peak memory {peak_mb:.0f} MB")
        assert peak_mb < MEMORY_LIMIT_MB


def make_meta(count: int = 3):
    from uafp_gui.io.dataset import DatasetMeta, FrameSpec

    return DatasetMeta(
        wavelength_um=0.532, objective_na=0.1, magnification=4.0, camera_pixel_um=3.45, led_pitch_mm=4.0,
        led_height_mm=90.0, led_array_shape=(8, 8), led_on_axis=(3.5, 3.5),
        frames=tuple(FrameSpec(leds=((3, k),), exposure_ms=1.0) for k in range(count)),
    )


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)


# ------------------------------------------------------------------------------ TIFF reader


@pytest.fixture(scope="module")
def valid_tiff(tmp_path_factory) -> bytes:
    from uafp_gui.io.dataset import write_dataset

    path = tmp_path_factory.mktemp("fuzz") / "valid.tif"
    frames = np.random.default_rng(1).integers(0, 4000, size=(3, 8, 8)).astype(np.uint16)
    write_dataset(path, make_meta(3), frames)
    return path.read_bytes()


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(0, 255)),
    st.tuples(st.just("cut"), st.integers(0, 10**6), st.just(0)),
    st.tuples(st.just("pointer"), st.integers(0, 10**6), st.integers(0, 2**32 - 1)),
    st.tuples(st.just("word"), st.integers(0, 10**6), st.integers(0, 2**32 - 1)),
)


def mutate(data: bytes, edits) -> bytes:
    out = bytearray(data)
    for kind, where, value in edits:
        if not out:
            break
        where %= len(out)
        if kind == "flip":
            out[where] = value
        elif kind == "cut":
            del out[where:]
        elif kind in ("pointer", "word") and where + 4 <= len(out):
            if kind == "pointer":  # aim a next-IFD pointer or a count at another IFD (loops, overlaps)
                value %= len(out)
            out[where : where + 4] = struct.pack("<I", value)
    return bytes(out)


def test_fuzz_dataset_reader(valid_tiff, tmp_path_factory):
    from uafp_gui.io.dataset import read_dataset

    tally = Tally("TIFF dataset reader")
    folder = tmp_path_factory.mktemp("fuzz_reader")

    @FUZZ
    @given(st.lists(mutation, min_size=1, max_size=4))
    def check(edits):
        path = folder / "mutated.tif"
        path.write_bytes(mutate(valid_tiff, edits))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = tally.run(read_dataset, path)
        if dataset is not None:
            assert dataset.frames.shape[0] <= 3

    check()
    tally.report()


def test_fuzz_resume_of_a_mutated_file(valid_tiff, tmp_path_factory):
    from uafp_gui.io.dataset import DatasetWriter

    tally = Tally("resume (DatasetWriter, in place)")
    folder = tmp_path_factory.mktemp("fuzz_resume")

    def resume(path: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with DatasetWriter(path, resume=True) as writer:
                while not writer.complete:
                    writer.append(np.ones((8, 8), np.uint16))

    @FUZZ
    @given(st.lists(mutation, min_size=1, max_size=3))
    def check(edits):
        path = folder / "mutated.tif"
        path.write_bytes(mutate(valid_tiff, edits))
        tally.run(resume, path)

    check()
    tally.report()


# ------------------------------------------------------------------------------ metadata and calibration


def test_fuzz_dataset_metadata(tmp_path_factory):
    from uafp_gui.io.dataset import DatasetMeta, _parse_json

    base = make_meta(2).to_dict()
    tally = Tally("dataset metadata JSON")

    @FUZZ
    @given(st.sampled_from(sorted(base)), json_values, st.booleans())
    def check(key, value, as_text):
        data = dict(base)
        data[key] = value
        if as_text:
            try:
                text = json.dumps(data)
            except (ValueError, OverflowError):
                return
            tally.run(lambda: DatasetMeta.from_dict(_parse_json(text, "fuzz")))
        else:
            tally.run(DatasetMeta.from_dict, data)

    check()
    tally.report()


def test_fuzz_json_text(tmp_path_factory):
    from uafp_gui.io.jsontext import parse_json

    tally = Tally("JSON text (any bytes)")

    @FUZZ
    @given(st.binary(max_size=300) | st.text(alphabet='[]{}",:0123456789.eE+-aNInfity \\u', max_size=300))
    def check(text):
        tally.run(parse_json, text, "fuzz")

    check()
    tally.report()


def test_fuzz_calibration_loader(tmp_path_factory):
    from uafp_gui.io.result import load_calibration

    folder = tmp_path_factory.mktemp("fuzz_calibration")
    base = {"format": "uafp-calibration", "version": 1, "led_geometry": {"height_mm": 90.0},
            "zernike_rad": {"4": 0.1}, "frame_gain": [1.0], "led_positions_mm": [[0.0, 0.0]], "object_pixel_um": 0.5}
    keys = sorted(base) + ["led_geometry.height_mm", "led_geometry.shift_x_mm", "zernike_rad.99", "iterations"]
    tally = Tally("calibration loader")

    @FUZZ
    @given(st.sampled_from(keys), json_values)
    def check(key, value):
        data = json.loads(json.dumps(base))
        if "." in key:
            outer, inner = key.split(".")
            data[outer][inner] = value
        else:
            data[key] = value
        try:
            text = json.dumps(data)
        except (ValueError, OverflowError):
            return
        path = folder / "calibration.json"
        path.write_text(text)
        tally.run(load_calibration, path)

    check()
    tally.report()


# ------------------------------------------------------------------------------ importers


def test_fuzz_folder_importer(tmp_path_factory):
    from uafp_gui.io.importers import import_folder

    folder = tmp_path_factory.mktemp("fuzz_import")
    frames = folder / "frames"
    frames.mkdir()
    tifffile.imwrite(frames / "a.tif", np.full((8, 8), 100, np.uint16))
    geometry = {"wavelength_um": 0.532, "objective_na": 0.1, "magnification": 2.0, "camera_pixel_um": 3.69,
                "led_pitch_mm": 4.0, "led_height_mm": 90.0, "led_array_shape": [8, 8], "led_on_axis": [3, 3],
                "exposure_ms": 10}
    tally = Tally("folder importer (CSV + geometry)")

    @FUZZ
    @given(
        st.binary(max_size=200) | st.text(alphabet="rowcl,fie\n0123456789.-/a\\tx ", max_size=200),
        st.sampled_from(sorted(geometry) + [None]),
        json_values,
    )
    def check(csv_content, key, value):
        data = dict(geometry)
        if key is not None:
            data[key] = value
        try:
            (folder / "geometry.json").write_text(json.dumps(data))
        except (ValueError, OverflowError):
            return
        csv_path = folder / "leds.csv"
        if isinstance(csv_content, bytes):
            csv_path.write_bytes(csv_content)
        else:
            csv_path.write_text("row,col,file\n" + csv_content)
        out = folder / "out.tif"
        out.unlink(missing_ok=True)
        tally.run(import_folder, frames, csv_path, folder / "geometry.json", out)
        assert not list(folder.glob(".*.partial.tif"))  # nothing half-written left behind

    check()
    tally.report()


# ------------------------------------------------------------------------------ CLI options


def test_fuzz_cli_option_parsing():
    from uafp_gui.cli import build_parser
    from uafp_gui.cli.acquire import build_microscope, build_plan
    from uafp_gui.cli.reconstruct import uafp_settings
    from uafp_gui.simulate import PRESETS

    parser = build_parser()
    numbers = st.one_of(
        st.integers(min_value=-(10**500), max_value=10**500).map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.sampled_from(["nan", "inf", "-inf", "1e400", "0", "-1", "", "x", "1,2", "0x10", "\u0663"]),
    )
    reconstruct_options = ["--upsample", "--iterations", "--tv-weight", "--batch-size", "--pixel-integration"]
    acquire_options = ["--exposure-ms", "--darkfield-exposure-ms", "--max-exposure-ms", "--average",
                       "--wavelength-um", "--objective-na", "--magnification", "--camera-pixel-um", "--led-pitch-mm",
                       "--led-height-mm", "--camera-offset", "--camera-timeout-s"]
    leds = st.one_of(
        st.text(max_size=30),
        st.builds(lambda n, m: f"{n}x{m}", st.integers(-5, 10**6), st.integers(-5, 10**6)),
        st.builds(lambda t: f"disk:{t}", numbers),
        st.builds(lambda t: f"list:{t}", st.text(alphabet="0123456789,;- x", max_size=30)),
    )
    tally = Tally("CLI option parsing (reconstruct, acquire)")

    def parse(argv: list[str]):
        try:
            args = parser.parse_args(argv)
        except SystemExit as exit_:  # argparse's own one-line error
            assert exit_.code == 2
            return None
        if args.command == "reconstruct":
            return uafp_settings(args)
        plan = build_plan(args)
        microscope = build_microscope(args, None, PRESETS["ideal"])
        return plan.led_sequence(microscope)

    @FUZZ
    @given(st.booleans(), st.lists(st.tuples(st.integers(0, 20), numbers), max_size=4), leds, numbers, numbers)
    def check(reconstruct, options, led_text, row, col):
        if reconstruct:
            argv = ["reconstruct", "d.tif"]
            for index, value in options:
                argv += [reconstruct_options[index % len(reconstruct_options)], value]
        else:
            argv = ["acquire", "--out", "a.tif", "--leds", led_text, "--led-on-axis", row, col]
            for index, value in options:
                argv += [acquire_options[index % len(acquire_options)], value]
        tally.run(parse, argv)

    import contextlib
    import io

    with contextlib.redirect_stderr(io.StringIO()):
        check()
    tally.report()


# ------------------------------------------------------------------------------ serial replies


class ScriptedPort:
    """A serial port that answers every command line with the next scripted byte string."""

    def __init__(self, replies: list[bytes]) -> None:
        self.replies = list(replies)
        self.timeout = 0.0
        self.is_open = True
        self.buffer = bytearray()

    def open(self) -> None: ...
    def close(self) -> None: ...

    def write(self, data: bytes) -> int:
        self.buffer += self.replies.pop(0) if self.replies else b""
        return len(data)

    def read(self, size: int = 1) -> bytes:
        out = bytes(self.buffer[:size])
        del self.buffer[:size]
        return out

    def reset_input_buffer(self) -> None:
        self.buffer.clear()

    @property
    def in_waiting(self) -> int:
        return len(self.buffer)


def test_fuzz_serial_replies():
    from uafp_gui.devices.illuminate import IlluminateConnection, IlluminateLedArray, LedArrayProperties

    pieces = st.sampled_from([b"-==-\n", b"\n", b"\r\n", b"ERROR: x\n", b"lit.1.2\n", b"seq.1.2.1\n", b"\x00\xff",
                              b'{"array_shape": [4, 4], "led_pitch_um": 4000}\n', b"uafp-led 1.0\n", b"-==-"])
    reply = st.lists(pieces | st.binary(max_size=12), max_size=6).map(b"".join)
    tally = Tally("serial replies (driver + pprops/plit/qseq)")

    def session(replies: list[bytes]) -> None:
        port = ScriptedPort(replies)
        connection = IlluminateConnection("fuzz", timeout_s=0.02, boot_timeout_s=0.05, open_port=lambda name: port)
        array = IlluminateLedArray(connection=connection, pitch_mm=4.0)
        for call in (array.read_lit, array.sequence_status, array.about, lambda: array.light([(0, 0)])):
            try:
                call()
            except UafpError:
                pass

    @FUZZ
    @given(st.lists(reply, min_size=1, max_size=8), st.text(max_size=200))
    def check(replies, pprops_text):
        tally.run(session, replies)
        tally.run(LedArrayProperties.from_pprops, pprops_text, None)

    check()
    tally.report()
