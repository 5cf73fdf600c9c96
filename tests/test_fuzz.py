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
    from uafp_gui.io.schema import DatasetMeta, FrameSpec
    from uafp_gui.model import Optics

    return DatasetMeta(
        optics=Optics(wavelength_um=0.532, objective_na=0.1, magnification=4.0, camera_pixel_um=3.45,
                      led_pitch_mm=4.0, led_height_mm=90.0, led_array_shape=(8, 8), led_on_axis=(3.5, 3.5)),
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
    from uafp_gui.io.writer import write_dataset

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
    from uafp_gui.io.writer import DatasetWriter

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
    from uafp_gui.io.schema import DatasetMeta, parse_json

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
            tally.run(lambda: DatasetMeta.from_dict(parse_json(text, "fuzz")))
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
    from uafp_gui.io.calibration import load_calibration

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

# The optics every importer target is given (a small 2x/0.1 set-up, 8x8 LEDs).
GEOMETRY = {"wavelength_um": 0.532, "objective_na": 0.1, "magnification": 2.0, "camera_pixel_um": 3.69,
            "led_pitch_mm": 4.0, "led_height_mm": 90.0, "led_array_shape": [8, 8], "led_on_axis": [3, 3],
            "exposure_ms": 10}


def test_fuzz_folder_importer(tmp_path_factory):
    from uafp_gui.io.importers import import_folder

    folder = tmp_path_factory.mktemp("fuzz_import")
    frames = folder / "frames"
    frames.mkdir()
    tifffile.imwrite(frames / "a.tif", np.full((8, 8), 100, np.uint16))
    geometry = GEOMETRY
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
    from uafp_gui.devices.illuminate import IlluminateLedArray, LedArrayProperties
    from uafp_gui.devices.illuminate_connection import IlluminateConnection

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


# ------------------------------------------------------------------------------ public-layout importers

# A field's value: arrays of many shapes and dtypes (complex, bool, text, NaN, huge, negative, empty).
field_values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.integers(min_value=-(2**62), max_value=2**62),
    st.text(max_size=8),
    st.lists(st.floats(allow_nan=True, allow_infinity=True, width=64), max_size=12),
    st.tuples(st.sampled_from(["f8", "f4", "u2", "i4", "c8", "?", "u1"]), st.lists(st.integers(0, 9), min_size=0,
                                                                                    max_size=3),
              st.integers(-5, 5)),
)


def as_array(value) -> np.ndarray:
    if isinstance(value, tuple):  # (dtype, shape, fill)
        dtype, shape, fill = value
        return np.full(tuple(shape), fill).astype(dtype)
    if isinstance(value, str):
        return np.array(value)
    return np.asarray(value)


def valid_fpm_fields(count: int = 4) -> dict[str, np.ndarray]:
    na = np.array([[0.0, 0.0], [0.044, 0.0], [0.0, 0.044], [0.044, 0.044]])[:count]
    frames = np.random.default_rng(2).uniform(0.1, 1.0, size=(8, 8, count))
    return {"I_low": frames, "na_calib": -na, "na_cal": np.array([[0.1]]), "mag": np.array([[2.0]]),
            "dpix_c": np.array([[3.69]]), "lambda": np.array([[0.532]])}


def test_fuzz_fpm_mat_importer(tmp_path_factory):
    """FPM-INR / APIC MATLAB files: any field replaced (v5 and v7.3), and byte mutations of a valid v5 file."""
    import scipy.io

    h5py = pytest.importorskip("h5py")
    from uafp_gui.io.import_public import import_fpm_mat

    folder = tmp_path_factory.mktemp("fuzz_fpm")
    valid = folder / "valid.mat"
    scipy.io.savemat(valid, valid_fpm_fields())
    valid_bytes = valid.read_bytes()
    tally = Tally("fpm-mat importer (fields, v5/v7.3, bytes)")

    @FUZZ
    @given(st.sampled_from(sorted(valid_fpm_fields()) + [None]), field_values, st.booleans(),
           st.lists(mutation, max_size=3))
    def check(key, value, v73, edits):
        path = folder / "in.mat"
        out = folder / "out.tif"
        out.unlink(missing_ok=True)
        if edits:
            path.write_bytes(mutate(valid_bytes, edits))
        else:
            fields = valid_fpm_fields()
            if key is not None:
                fields[key] = as_array(value)
            if v73:
                with h5py.File(path, "w", userblock_size=512) as h5:
                    for name, array in fields.items():
                        h5.create_dataset(name, data=np.asarray(array).T if np.asarray(array).dtype.kind != "U"
                                          else np.bytes_(str(array).encode()))
            else:
                try:
                    scipy.io.savemat(path, fields)
                except (ValueError, TypeError):
                    return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tally.run(import_fpm_mat, path, out)

    check()
    tally.report()


def valid_ptylab_fields() -> dict[str, np.ndarray]:
    positions = np.array([[0.0, 0.0], [0.0, 4e-3], [4e-3, 0.0], [4e-3, 4e-3]])
    return {"ptychogram": np.random.default_rng(3).uniform(0.1, 1.0, size=(4, 8, 8)), "encoder": positions,
            "dxd": np.array(3.69e-6), "magnification": np.array(2.0), "wavelength": np.array(0.532e-6),
            "zled": np.array(0.09), "NA": np.array(0.1), "orientation": np.array(0)}


def test_fuzz_ptylab_importer(tmp_path_factory):
    """PtyLab FPM HDF5: any field replaced by any value (or a group), and byte mutations of a valid file."""
    h5py = pytest.importorskip("h5py")
    from uafp_gui.io.import_public import import_ptylab_hdf5

    folder = tmp_path_factory.mktemp("fuzz_ptylab")
    valid = folder / "valid.h5"
    with h5py.File(valid, "w") as h5:
        for name, array in valid_ptylab_fields().items():
            h5.create_dataset(name, data=array)
    valid_bytes = valid.read_bytes()
    tally = Tally("ptylab importer (fields, bytes)")

    @FUZZ
    @given(st.sampled_from(sorted(valid_ptylab_fields()) + [None]), field_values | st.just("group"),
           st.lists(mutation, max_size=3))
    def check(key, value, edits):
        path = folder / "in.h5"
        out = folder / "out.tif"
        out.unlink(missing_ok=True)
        if edits:
            path.write_bytes(mutate(valid_bytes, edits))
        else:
            with h5py.File(path, "w") as h5:
                for name, array in valid_ptylab_fields().items():
                    if name != key:
                        h5.create_dataset(name, data=array)
                    elif value == "group":
                        h5.create_group(name)
                    else:
                        array = as_array(value)
                        text = np.bytes_(str(array).encode())
                        h5.create_dataset(name, data=text if array.dtype.kind == "U" else array)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tally.run(import_ptylab_hdf5, path, out)

    check()
    tally.report()


def test_fuzz_micromanager_importer(tmp_path_factory):
    """Micro-Manager OME-TIFF: byte mutations of an MMStack file with per-image metadata, hostile
    per-image JSON, and any LED CSV."""
    from uafp_gui.io.import_mm import import_micromanager

    folder = tmp_path_factory.mktemp("fuzz_mm")
    stack = folder / "FP_1_MMStack_Pos0.ome.tif"
    frames = np.random.default_rng(4).integers(100, 4000, (3, 8, 8), dtype=np.uint16)
    tifffile.imwrite(stack, frames, ome=True, metadata={"axes": "TYX"})
    with tifffile.TiffFile(stack) as tif:
        ome_xml = tif.ome_metadata

    def write_stack(image_meta: list[str]) -> None:
        with tifffile.TiffWriter(stack) as tif:
            for k, frame in enumerate(frames):
                tif.write(frame, description=ome_xml if k == 0 else None, metadata=None,
                          extratags=[(51123, "s", 0, image_meta[k], True)])

    good = [json.dumps({"LEDArray-Pattern": f"3,{k}", "Exposure-ms": 5.0}) for k in range(3)]
    write_stack(good)
    valid_bytes = stack.read_bytes()
    geometry = folder / "g.json"
    geometry.write_text(json.dumps(GEOMETRY))
    tally = Tally("micromanager importer (OME-TIFF bytes, per-image JSON, CSV)")

    @FUZZ
    @given(
        st.sampled_from(["bytes", "json", "csv"]),
        st.lists(mutation, min_size=1, max_size=3),
        json_values,
        st.binary(max_size=120) | st.text(alphabet="rowcl,eds;\n0123456789.-x_ms", max_size=120),
    )
    def check(kind, edits, value, csv_content):
        out = folder / "out.tif"
        out.unlink(missing_ok=True)
        leds_csv = None
        if kind == "bytes":
            stack.write_bytes(mutate(valid_bytes, edits))
        elif kind == "json":
            meta = {"LEDArray-Pattern": value, "Exposure-ms": value}
            try:
                text = json.dumps(meta)
            except (ValueError, OverflowError):
                return
            write_stack([text, good[1], good[2]])
        else:
            stack.write_bytes(valid_bytes)
            leds_csv = folder / "leds.csv"
            if isinstance(csv_content, bytes):
                leds_csv.write_bytes(csv_content)
            else:
                leds_csv.write_text("row,col,exposure_ms\n" + csv_content)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tally.run(lambda: import_micromanager(folder, out, geometry=geometry, leds_csv=leds_csv))

    check()
    tally.report()


def test_fuzz_folder_importer_images(tmp_path_factory):
    """The folder importer's frames: byte mutations of a TIFF and a PNG frame."""
    from PIL import Image

    from uafp_gui.io.importers import import_folder

    folder = tmp_path_factory.mktemp("fuzz_images")
    frames = folder / "frames"
    frames.mkdir()
    image = np.random.default_rng(5).integers(100, 4000, (8, 8), dtype=np.uint16)
    tifffile.imwrite(frames / "a.tif", image)
    Image.fromarray(image).save(frames / "b.png")
    originals = {name: (frames / name).read_bytes() for name in ("a.tif", "b.png")}
    (folder / "geometry.json").write_text(json.dumps(GEOMETRY))
    (folder / "leds.csv").write_text("row,col,file\n3,3,a.tif\n3,4,b.png\n")
    tally = Tally("folder importer (TIFF and PNG frame bytes)")

    @FUZZ
    @given(st.sampled_from(sorted(originals)), st.lists(mutation, min_size=1, max_size=4))
    def check(name, edits):
        for other, data in originals.items():
            (frames / other).write_bytes(mutate(data, edits) if other == name else data)
        out = folder / "out.tif"
        out.unlink(missing_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tally.run(import_folder, frames, folder / "leds.csv", folder / "geometry.json", out)

    check()
    tally.report()


def test_fuzz_zheng_importer(tmp_path_factory):
    """The blood-smear MAT importer: byte mutations of a small file in its layout."""
    import scipy.io

    from uafp_gui.io.importers import import_zheng_mat

    folder = tmp_path_factory.mktemp("fuzz_zheng")
    valid = folder / "valid.mat"
    scipy.io.savemat(valid, {"imlow_HDR": np.random.default_rng(6).uniform(0.01, 2, (8, 8, 4)).astype(np.float32)})
    valid_bytes = valid.read_bytes()
    tally = Tally("zheng importer (MAT bytes)")

    @FUZZ
    @given(st.lists(mutation, min_size=1, max_size=4))
    def check(edits):
        path = folder / "in.mat"
        path.write_bytes(mutate(valid_bytes, edits))
        out = folder / "out.tif"
        out.unlink(missing_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tally.run(import_zheng_mat, path, out)

    check()
    tally.report()
