"""Issue 14: every reader, every reply, every write - no hang, no raw traceback, nothing lost.

One test (or a few) per class of the issue; the property-based fuzz suite is in
tests/test_fuzz.py (slow lane)."""

from __future__ import annotations

import json
import os
import stat
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile

from uafp_gui import limits
from uafp_gui.errors import DatasetError
from uafp_gui.io.dataset import PartialDatasetWarning, read_dataset
from uafp_gui.io.schema import DatasetMeta, FrameSpec
from uafp_gui.io.writer import DatasetWriter, write_dataset
from uafp_gui.model import Optics


def make_meta(frame_count: int = 4) -> DatasetMeta:
    return DatasetMeta(
        optics=Optics(wavelength_um=0.532, objective_na=0.1, magnification=4.0, camera_pixel_um=3.45,
                      led_pitch_mm=4.0, led_height_mm=90.0, led_array_shape=(32, 32), led_on_axis=(15.5, 16.0)),
        frames=tuple(FrameSpec(leds=((15, 16 + k % 8),), exposure_ms=1.0) for k in range(frame_count)),
    )


def make_frames(count: int = 4, shape=(12, 10)) -> np.ndarray:
    return np.random.default_rng(3).integers(0, 4000, size=(count, *shape)).astype(np.uint16)


def ifd_offsets(path: Path) -> list[int]:
    with tifffile.TiffFile(path) as tif:
        return [page.offset for page in tif.pages]


def next_pointer_position(path: Path, ifd_offset: int) -> int:
    data = path.read_bytes()
    (count,) = struct.unpack_from("<H", data, ifd_offset)
    return ifd_offset + 2 + 12 * count


# ------------------------------------------------------------------ 1. looping IFD chain


@pytest.mark.timeout(60)
@pytest.mark.parametrize("target", [0, 1, 3])
def test_looping_ifd_chain_ends_the_walk(tmp_path, target):
    path = tmp_path / "loop.tif"
    write_dataset(path, make_meta(4), make_frames(4)[:4])
    offsets = ifd_offsets(path)
    with open(path, "r+b") as fh:  # the last page points back to an earlier one (or itself)
        fh.seek(next_pointer_position(path, offsets[-1]))
        fh.write(struct.pack("<I", offsets[target]))
    with warnings.catch_warnings():
        warnings.simplefilter("error", PartialDatasetWarning)
        dataset = read_dataset(path)  # all 4 planned frames are there: complete, no loop followed
    assert dataset.complete and dataset.frame_count == 4


@pytest.mark.timeout(60)
@pytest.mark.parametrize("importer", ["micromanager", "folder"])
def test_looping_ifd_chain_in_an_imported_tiff_is_a_typed_error(tmp_path, importer):
    """The importers walk the page chain bounded and loop-checked (uafp_gui.io.tiff.walk_pages)
    before tifffile's own series walk: a mutated OME-TIFF once hung tifffile's series walk in
    tests/test_fuzz.py::test_fuzz_micromanager_importer (7 min, killed by the per-test timeout)."""
    from uafp_gui.io.import_mm import import_micromanager
    from uafp_gui.io.importers import import_folder

    folder = tmp_path / "acq"
    folder.mkdir()
    path = folder / ("FP_MMStack_Pos0.ome.tif" if importer == "micromanager" else "a.tif")
    pages = 3 if importer == "micromanager" else 2
    tifffile.imwrite(path, make_frames(pages), ome=importer == "micromanager", metadata={"axes": "TYX"})
    offsets = ifd_offsets(path)
    with open(path, "r+b") as fh:  # the last page points back to the first
        fh.seek(next_pointer_position(path, offsets[-1]))
        fh.write(struct.pack("<I", offsets[0]))
    geometry = tmp_path / "g.json"
    geometry.write_text(json.dumps({**{k: v for k, v in make_meta().to_dict().items() if k not in (
        "frames", "format", "version")}, "exposure_ms": 1.0}))
    with pytest.raises(DatasetError) as error:
        if importer == "micromanager":
            (tmp_path / "leds.csv").write_text("row,col\n15,16\n15,17\n15,18\n")
            import_micromanager(folder, tmp_path / "out.tif", geometry=geometry, leds_csv=tmp_path / "leds.csv")
        else:
            (tmp_path / "leds.csv").write_text("row,col,file\n15,16,a.tif\n")
            import_folder(folder, tmp_path / "leds.csv", geometry, tmp_path / "out.tif")
    assert "\n" not in str(error.value) and "a.tif" in str(error.value) or "Pos0" in str(error.value)


@pytest.mark.timeout(60)
def test_looping_chain_of_a_partial_file_reads_and_resumes(tmp_path):
    path = tmp_path / "loop.tif"
    with DatasetWriter(path, make_meta(6)) as writer:
        for frame in make_frames(3):
            writer.append(frame)
    offsets = ifd_offsets(path)
    with open(path, "r+b") as fh:
        fh.seek(next_pointer_position(path, offsets[-1]))
        fh.write(struct.pack("<I", offsets[1]))
    with pytest.warns(PartialDatasetWarning, match="3 of 6"):
        assert read_dataset(path).frame_count == 3
    with DatasetWriter(path, resume=True) as writer:
        assert writer.frames_present == 3
        for frame in make_frames(6)[3:]:
            writer.append(frame)
    dataset = read_dataset(path)
    assert dataset.complete
    np.testing.assert_array_equal(dataset.frames, make_frames(6))


def test_extra_pages_are_refused_without_reading_them(tmp_path, monkeypatch):
    path = tmp_path / "many.tif"
    with tifffile.TiffWriter(path) as tif:
        for frame in make_frames(200, shape=(4, 4)):
            tif.write(frame, photometric="minisblack", metadata=None)
    path.with_suffix(".json").write_text(make_meta(3).to_json())
    decoded = []
    real = tifffile.TiffPage.asarray
    monkeypatch.setattr(tifffile.TiffPage, "asarray", lambda self, *a, **k: decoded.append(1) or real(self, *a, **k))
    walked = []
    real_get = tifffile.TiffPages.get
    monkeypatch.setattr(
        tifffile.TiffPages, "get", lambda self, i, *a, **k: walked.append(i) or real_get(self, i, *a, **k)
    )
    with pytest.raises(DatasetError, match="more than 3 frames"):
        read_dataset(path)
    assert not decoded and max(walked) <= 4


# ------------------------------------------------------------------ 6. limits before allocating


def test_huge_compressed_page_is_refused_before_decoding(tmp_path, monkeypatch):
    path = tmp_path / "bomb.tif"
    tifffile.imwrite(path, np.zeros((9000, 8000), np.uint16), compression="zlib")  # ~140 MB decoded
    assert path.stat().st_size < 2_000_000
    path.with_suffix(".json").write_text(make_meta(1).to_json())
    monkeypatch.setattr(tifffile.TiffPage, "asarray", lambda *a, **k: pytest.fail("decoded a page over the limit"))
    with pytest.raises(DatasetError, match="pixels a frame may have"):
        read_dataset(path)


def test_dataset_memory_limit(tmp_path, monkeypatch):
    path = tmp_path / "big.tif"
    write_dataset(path, make_meta(4), make_frames(4, shape=(64, 64)))
    monkeypatch.setenv(limits.MAX_DATASET_BYTES_ENV, str(64 * 64 * 2 * 3))
    with pytest.raises(DatasetError, match="GiB limit"):
        read_dataset(path)


# ------------------------------------------------------------------ 7. resume in place


def test_resume_appends_in_place_keeps_mode_and_bytes(tmp_path):
    path = tmp_path / "run.tif"
    with DatasetWriter(path, make_meta(6)) as writer:
        for frame in make_frames(6)[:2]:
            writer.append(frame)
    with open(path, "ab") as fh:  # a half-written third page (killed mid-frame)
        fh.write(b"\x01" * 100)
    os.chmod(path, 0o640)
    before = path.read_bytes()
    inode = path.stat().st_ino
    with DatasetWriter(path, resume=True) as writer:
        assert not list(tmp_path.glob("*.resume.tif")) and not list(tmp_path.glob(".*"))
        assert writer.frames_present == 2
        for frame in make_frames(6)[2:]:
            writer.append(frame)
    assert path.stat().st_ino == inode  # same file, never copied
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    after = path.read_bytes()
    first_two_end = len(before) - 100
    # the first two pages are untouched except page 1's next-IFD pointer (linked to page 2)
    link = next_pointer_position(path, ifd_offsets(path)[1])
    assert after[:link] == before[:link] and after[link + 4 : first_two_end] == before[link + 4 : first_two_end]
    dataset = read_dataset(path)
    assert dataset.complete
    np.testing.assert_array_equal(dataset.frames, make_frames(6))


def test_resume_on_a_full_disk_says_so_and_leaves_the_file(tmp_path, monkeypatch):
    path = tmp_path / "run.tif"
    with DatasetWriter(path, make_meta(4)) as writer:
        writer.append(make_frames(1)[0])
    before = path.read_bytes()
    with DatasetWriter(path, resume=True) as writer:
        real_write = writer._fh.write

        def full(data):
            raise OSError(28, "No space left on device")

        writer._fh.write = full
        with pytest.raises(OSError):
            writer.append(make_frames(2)[1])
        writer._fh.write = real_write
    with pytest.warns(PartialDatasetWarning):
        assert read_dataset(path).frame_count == 1
    assert path.read_bytes()[: len(before)] == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.tif"]


# ------------------------------------------------------------------ 10. atomic dataset writes


def test_write_dataset_failure_leaves_nothing(tmp_path):
    out = tmp_path / "out.tif"
    frames = make_frames(4).astype(np.float32)
    frames[2, 0, 0] = np.nan  # bad data found only at frame 2
    with pytest.raises(DatasetError, match="NaN"):
        write_dataset(out, make_meta(4), frames)
    assert list(tmp_path.iterdir()) == []
    write_dataset(out, make_meta(4), make_frames(4))  # the next run is not refused
    assert read_dataset(out).complete


# ------------------------------------------------------------------ 2. atomic result folders


def _calibration(**changes):
    from uafp_gui.io.calibration import Calibration
    from uafp_gui.model import LedGeometry

    fields = dict(led_geometry=LedGeometry(0.1, -0.2, 0.5, 80.0), zernike_rad={4: 0.3}, object_pixel_um=0.5)
    fields.update(changes)
    return Calibration(**fields)


def _images(value: float):
    image = np.full((32, 32), value, np.float32)
    return image, image * 0, image[:8, :8], image[:8, :8] * 0


def test_failed_result_write_leaves_the_previous_result_whole(tmp_path):
    from uafp_gui.io.result import read_result, write_result

    folder = tmp_path / "r"
    write_result(folder, *_images(1.0), _calibration())
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def full_disk(path):
        raise OSError(28, "No space left on device")

    with pytest.raises(DatasetError, match="No space left.*nothing was changed"):
        write_result(folder, *_images(2.0), _calibration(zernike_rad={4: 0.9}), extra_files={"report.png": full_disk})
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]  # no temporary folder left
    assert read_result(folder, require_manifest=True).amplitude.max() == 1.0

    def diverged(path):
        raise ValueError("non-finite loss")

    with pytest.raises(ValueError):
        write_result(folder, *_images(3.0), _calibration(), extra_files={"report.png": diverged})
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_result_writer_never_deletes_foreign_files(tmp_path):
    from uafp_gui.io.result import write_result

    (tmp_path / "thesis.docx").write_text("precious")
    with pytest.raises(DatasetError, match="not part of a uafp result"):
        write_result(tmp_path, *_images(1.0), _calibration())
    assert (tmp_path / "thesis.docx").read_text() == "precious"


def test_score_refuses_a_mixed_or_incomplete_folder(tmp_path):
    import shutil

    from uafp_gui.cli.score import score_folders
    from uafp_gui.io.result import write_result

    old, new = tmp_path / "old", tmp_path / "new"
    write_result(old, *_images(1.0), _calibration())
    write_result(new, *_images(2.0), _calibration(zernike_rad={4: 0.7}))
    shutil.copy(old / "calibration.json", new / "calibration.json")  # new images beside an old calibration
    with pytest.raises(DatasetError, match="mixes files from different runs: calibration.json"):
        score_folders(new, old)
    (old / "manifest.json").unlink()  # written by hand, or cut short before the manifest
    with pytest.raises(DatasetError, match="no manifest.json"):
        score_folders(old, old)


# ------------------------------------------------------------------ 5. safe state loading


def test_crafted_state_file_cannot_run_code(tmp_path):
    import pickle

    import torch

    from uafp_gui.errors import ReconstructionError
    from uafp_gui.recon.uafp import UafpReconstruction, UafpSettings

    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    crafted = tmp_path / "state.pt"
    torch.save({"object": Exploit()}, crafted, pickle_protocol=2)
    recon = UafpReconstruction(make_meta(4), (12, 10), UafpSettings(upsample=2, device="cpu"))
    with pytest.raises(ReconstructionError, match="refused, nothing of it was run"):
        recon.load_state(crafted)
    assert not marker.exists()
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x80\x04not a pickle at all")
    with pytest.raises(ReconstructionError):
        recon.load_state(garbage)
    with open(tmp_path / "plain.pt", "wb") as fh:
        pickle.dump([1, 2, 3], fh)
    with pytest.raises(ReconstructionError, match="not a uafp reconstruction state"):
        recon.load_state(tmp_path / "plain.pt")


# ------------------------------------------------------------------ 3. serial framing resynchronises


class SlowPort:
    """A fake serial port whose reply to each command line arrives after a chosen delay."""

    def __init__(self, delays: dict[str, float]) -> None:
        import time as _time

        self._time = _time
        self.delays = delays
        self.timeout = 0.01
        self.is_open = True
        self._scheduled: list[tuple[float, bytes]] = []
        self._buffer = bytearray()

    def _arrived(self) -> None:
        now = self._time.monotonic()
        for item in [item for item in self._scheduled if item[0] <= now]:
            self._buffer += item[1]
            self._scheduled.remove(item)

    def open(self) -> None: ...
    def close(self) -> None: ...

    def write(self, data: bytes) -> int:
        command = data.decode().strip()
        name = command.split(".")[0]
        reply = {"about": "uafp-led test", "ver": "1.0"}.get(name, f"echo {command}")
        at = max([self._time.monotonic() + self.delays.get(name, 0.0)] + [t for t, _ in self._scheduled])
        self._scheduled.append((at, f"{reply}\n-==-\n".encode()))  # in order, like the firmware
        return len(data)

    def read(self, size: int = 1) -> bytes:
        self._arrived()
        if not self._buffer:
            self._time.sleep(self.timeout)
            self._arrived()
        out = bytes(self._buffer[:size])
        del self._buffer[:size]
        return out

    def reset_input_buffer(self) -> None:
        self._arrived()
        self._buffer.clear()

    @property
    def in_waiting(self) -> int:
        self._arrived()
        return len(self._buffer)


@pytest.mark.timeout(60)
def test_late_reply_is_discarded_not_taken_as_the_next_answer():
    from uafp_gui.devices.illuminate_connection import IlluminateConnection
    from uafp_gui.errors import LedArrayTimeout

    port = SlowPort({"slow": 0.35})
    connection = IlluminateConnection("fake", timeout_s=0.2, boot_timeout_s=0.5, open_port=lambda name: port)
    connection.open()
    with pytest.raises(LedArrayTimeout):
        connection.transact("slow.1")  # its reply comes 0.15 s after the timeout
    assert connection.transact("fast.2") == ["echo fast.2"]  # not ["echo slow.1"]
    assert connection.transact("fast.3") == ["echo fast.3"]
    # two late replies in a row, the second sent while the first is still owed
    port.delays["slow"] = 0.25
    for k in range(2):
        with pytest.raises(LedArrayTimeout):
            connection.transact(f"slow.{k}", timeout_s=0.1)
    assert connection.transact("fast.4") == ["echo fast.4"]
    # a reply that never comes (dropped command) costs one wait, then the line is in step again
    port.delays["slow"] = 1e9
    with pytest.raises(LedArrayTimeout):
        connection.transact("slow.9")
    port._scheduled.clear()
    assert connection.transact("fast.5") == ["echo fast.5"]
    assert connection.transact("fast.6") == ["echo fast.6"]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0, 0.0])
def test_nonsense_timeouts_are_refused(value):
    from uafp_gui.devices.illuminate_connection import IlluminateConnection
    from uafp_gui.errors import LedArrayError

    with pytest.raises(LedArrayError, match="seconds"):
        IlluminateConnection("fake", timeout_s=value)


@pytest.mark.parametrize(
    "reply",
    [
        "not json", "[1, 2]", '{"array_shape": [0, 0]}', '{"array_shape": [-3, 4]}', '{"array_shape": [1e400, 2]}',
        '{"array_shape": [true, 2]}', '{"array_shape": [100000, 100000]}',
        '{"array_shape": [4, 4], "led_pitch_um": NaN}',
        '{"array_shape": [4, 4], "led_pitch_um": -2}', '{"array_shape": [4, 4], "sequence_max": "x"}',
        '{"array_shape": [4, 4], "line_max": 0}', '{"array_shape": [4, 4], "color_channels": 5}', "[" * 100000,
    ],
)
def test_odd_pprops_replies_are_typed_errors(reply):
    from uafp_gui.devices.illuminate import LedArrayProperties
    from uafp_gui.errors import LedArrayError

    with pytest.raises(LedArrayError):
        LedArrayProperties.from_pprops(reply, None)


@pytest.mark.parametrize("reply", ["lit.x", "lot.1", "lit.1.99999", "lit.-1", "lit.1e3", "lit.\u00b2"])
def test_odd_plit_replies_are_typed_errors(reply):
    from uafp_gui.errors import LedArrayError
    from uafp_gui.simulated.led_array import SimulatedLedArray

    with SimulatedLedArray(shape=(8, 8)) as array:
        array._connection.command = lambda line, timeout_s=None: [reply]
        with pytest.raises(LedArrayError, match="plit"):
            array.read_lit()


def test_a_device_that_only_says_the_terminator_is_not_an_led_array():
    from uafp_gui.devices.illuminate_connection import IlluminateConnection
    from uafp_gui.errors import LedArrayNotFound

    class EmptyReplies(SlowPort):
        def write(self, data: bytes) -> int:
            self._scheduled.append((0.0, b"-==-\n"))
            return len(data)

    connection = IlluminateConnection(
        "fake", timeout_s=0.2, boot_timeout_s=0.5, open_port=lambda name: EmptyReplies({})
    )
    with pytest.raises(LedArrayNotFound, match="not an illuminate LED array"):
        connection.open()


# ------------------------------------------------------------------ 4. import folder stays in its folder

GEOMETRY = {
    "wavelength_um": 0.532, "objective_na": 0.1, "magnification": 2.0, "camera_pixel_um": 3.69, "led_pitch_mm": 4.0,
    "led_height_mm": 90.0, "led_array_shape": [32, 32], "led_on_axis": [16, 16], "exposure_ms": 10,
}


def _import_case(tmp_path: Path, csv_text: str, frames: dict[str, np.ndarray] | None = None) -> tuple[Path, Path, Path]:
    folder = tmp_path / "frames"
    folder.mkdir(exist_ok=True)
    for name, frame in (frames or {"a.tif": np.full((8, 8), 100, np.uint16)}).items():
        tifffile.imwrite(folder / name, frame)
    (tmp_path / "leds.csv").write_text(csv_text)
    (tmp_path / "geometry.json").write_text(json.dumps(GEOMETRY))
    return folder, tmp_path / "leds.csv", tmp_path / "geometry.json"


@pytest.mark.parametrize("name", ["../secret.tif", "sub/../../secret.tif", "/etc/passwd", "link.tif"])
def test_import_folder_reads_nothing_outside_the_folder(tmp_path, name):
    from uafp_gui.io.importers import import_folder

    tifffile.imwrite(tmp_path / "secret.tif", np.full((8, 8), 7, np.uint16))
    folder, csv_path, geometry = _import_case(tmp_path, f"row,col,file\n16,16,{name}\n")
    (folder / "link.tif").symlink_to(tmp_path / "secret.tif")
    with pytest.raises(DatasetError, match="not a plain name inside|leads outside"):
        import_folder(folder, csv_path, geometry, tmp_path / "out.tif")
    assert not (tmp_path / "out.tif").exists()


@pytest.mark.parametrize(
    "frame, message",
    [
        (np.full((8, 8), 1 + 2j, np.complex64), "complex"),
        (np.ones((8, 8), bool), "bool"),
        (np.full((8, 8), -5, np.int16), "negative counts"),
        (np.full((8, 8), -1.0, np.float32), "no positive value"),
    ],
)
def test_import_refuses_frames_that_are_not_intensities(tmp_path, frame, message):
    from uafp_gui.io.importers import import_folder

    folder, csv_path, geometry = _import_case(tmp_path, "row,col,file\n16,16,a.tif\n", {"a.tif": frame})
    with pytest.raises(DatasetError, match=message):
        import_folder(folder, csv_path, geometry, tmp_path / "out.tif")
    assert list(tmp_path.glob("*.tif")) == []


@pytest.mark.parametrize(
    "csv_bytes, message",  # ids: the expected message
    [
        (b"row,col,file\n16,16,\xff\xfe.tif\n", "not UTF-8"),
        (b"row,col,file\n16,16," + b"x" * 200_000 + b"\n", "not a readable CSV"),
        (b"row,col,file\n16," + b"9" * 401 + b",a.tif\n", r"leds\[0\]\[1\] must be finite"),
        (b"row,col,file,exposure_ms\n16,16,a.tif,nan\n", "exposure_ms"),
        (b"row,col,file,exposure_ms\n16,16,a.tif,1e400\n", "exposure_ms"),
    ],
)
def test_bad_led_csv_is_one_typed_error(tmp_path, csv_bytes, message):
    from uafp_gui.io.importers import import_folder

    folder, csv_path, geometry = _import_case(tmp_path, "")
    csv_path.write_bytes(csv_bytes)
    with pytest.raises(DatasetError, match=message):
        import_folder(folder, csv_path, geometry, tmp_path / "out.tif")


# ------------------------------------------------------------------ 8. typed errors for users' files


@pytest.mark.parametrize(
    "text, message",
    [
        ("[" * 100_000 + "]" * 100_000, "nested"),
        ('{"a": ' * 200 + "1" + "}" * 200, "nested"),
        ('{"wavelength_um": ' + "9" * 401 + "}", "wavelength_um"),
        ('{"wavelength_um": 1e300}', "wavelength_um"),
        ('{"wavelength_um": NaN}', "invalid number"),
        ('{"wavelength_um": 1e999}', "invalid number"),
    ],
)
def test_hostile_metadata_json_is_one_typed_error(tmp_path, text, message):
    path = tmp_path / "d.tif"
    tifffile.imwrite(path, np.ones((4, 4), np.uint16))
    if text.startswith('{"wavelength_um"'):
        meta = make_meta(1).to_dict()
        meta["wavelength_um"] = "@@"
        text = json.dumps(meta).replace('"@@"', text.split(": ", 1)[1].rstrip("}"))
    path.with_suffix(".json").write_text(text)
    with pytest.raises(DatasetError, match=message):
        read_dataset(path)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"led_positions_mm": [1, 2, 3]}, "led_positions_mm"),
        ({"led_positions_mm": [[1, 2, 3]]}, "led_positions_mm"),
        ({"zernike_rad": {"22": 0.1}}, "Noll index 1 to 21"),
        ({"zernike_rad": {"4": 1e300}}, "zernike_rad"),
        ({"led_geometry": {"height_mm": 1e300}}, "height_mm"),
        ({"frame_gain": [1e300]}, "frame_gain"),
    ],
)
def test_hostile_calibration_is_one_typed_error(tmp_path, change, message):
    from uafp_gui.io.calibration import load_calibration

    data = {"format": "uafp-calibration", "version": 1, "led_geometry": {"height_mm": 90.0}}
    data.update(change)
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=message):
        load_calibration(path)


def test_a_folder_named_calibration_json_is_a_typed_error(tmp_path):
    from uafp_gui.io.calibration import load_calibration

    (tmp_path / "calibration.json").mkdir()
    with pytest.raises(DatasetError, match="is a folder, not a calibration file"):
        load_calibration(tmp_path / "calibration.json")


def test_noll_limit_matches_the_physics():
    from uafp_gui.io.calibration import MAX_NOLL_INDEX
    from uafp_gui.physics.zernike import MAX_NOLL_INDEX as PHYSICS_MAX

    assert MAX_NOLL_INDEX == PHYSICS_MAX


# ------------------------------------------------------------------ 6, 8, 9: command-line options


def _cli(capsys, *argv):
    from uafp_gui.cli import main

    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse's own one-line error
        code = exit_.code
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    errors = [line for line in captured.err.splitlines() if "error:" in line]
    return code, errors


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    from uafp_gui.cli import main

    folder = tmp_path_factory.mktemp("small")
    assert main(["simulate", str(folder / "s.tif"), "--preset", "ideal", "--frame-size", "32", "--led-grid", "5"]) == 0
    return folder / "s.tif"


@pytest.mark.parametrize(
    "options, message",
    [
        (["--upsample", "256"], "upsample"),
        (["--upsample", "0"], "upsample"),
        (["--tv-weight", "nan"], "finite"),
        (["--tv-weight", "-1"], "tv_weight"),
        (["--iterations", "9" * 401], "whole number"),
        (["--method", "classic", "--upsample", "64"], "upsample"),
    ],
)
def test_reconstruct_options_are_checked_before_any_work(capsys, tmp_path, small_dataset, options, message):
    code, errors = _cli(capsys, "reconstruct", small_dataset, "--out", tmp_path / "r", *options)
    assert code == 2 and len(errors) == 1 and message in errors[0], errors
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "options, message",
    [
        (["--leds", "100000x100000"], "at most 100x100"),
        (["--leds", "101x101"], "at most 100x100"),
        (["--leds", "list:1,2,3"], "list:r,c"),
        (["--led-on-axis", "nan", "1"], "finite"),
        (["--camera-timeout-s", "inf"], "finite"),
        (["--wavelength-um", "1e300"], "wavelength_um"),
    ],
)
def test_acquire_options_are_checked_before_the_camera_runs(capsys, tmp_path, options, message):
    code, errors = _cli(capsys, "acquire", "--simulate", "--sim-no-wait", "--out", tmp_path / "a.tif", *options)
    assert code == 2 and len(errors) == 1 and message in errors[0], errors
    assert not (tmp_path / "a.tif").exists()


@pytest.mark.parametrize(
    "options, message",
    [
        (["--upsample", "256", "--frame-size", "32"], "upsample"),
        (["--frame-size", "100000"], "--frame-size"),
        (["--frame-size", "8"], "--frame-size"),
        (["--frame-size", "4096", "--upsample", "4"], "px limit"),
        (["--led-grid", "100000"], "--led-grid"),
        (["--led-grid", "100", "--frame-size", "128"], "a simulation may render"),
        (["--led-grid", "40"], "outside the 32x32 array"),
        (["--led-array-shape", "100000", "100000"], "--led-array-shape"),
        (["--led-on-axis", "5000", "5000"], "outside the 32x32 array"),
        (["--pixel-integration", "100"], "pixel_integration"),
        (["--bit-depth", "40"], "--bit-depth"),
        (["--photons-per-pixel", "1e300"], "--photons-per-pixel"),
    ],
)
def test_simulate_refuses_oversized_inputs_before_allocating(capsys, tmp_path, monkeypatch, options, message):
    """Issue 14 class 6 for `uafp simulate`: the documented limits (uafp_gui.limits), one line, nothing rendered."""
    import uafp_gui.simulate as simulate_module

    def no_rendering(*args, **kwargs):
        raise AssertionError("the microscope model was built before the size checks")

    monkeypatch.setattr(simulate_module, "true_microscope_model", no_rendering)
    code, errors = _cli(capsys, "simulate", tmp_path / "s.tif", "--preset", "misaligned", *options)
    assert code == 2 and len(errors) == 1 and message in errors[0], errors
    assert not (tmp_path / "s.tif").exists()


def test_the_limits_are_one_set_of_numbers():
    """Readers, plans, the CLI, the physics and the simulator share uafp_gui.limits."""
    from uafp_gui import model
    from uafp_gui.acquisition import plan
    from uafp_gui.cli import options
    from uafp_gui.devices import illuminate, illuminate_connection
    from uafp_gui.io import calibration, importers, jsontext, schema, tiff
    from uafp_gui.recon import common

    assert tiff.MAX_FRAME_PIXELS == limits.MAX_FRAME_PIXELS
    assert schema.MAX_FRAMES == plan.MAX_PLAN_LEDS == limits.MAX_FRAMES
    assert model.MAX_LED_ARRAY_SIDE == illuminate.MAX_ARRAY_SIDE == limits.MAX_LED_ARRAY_SIDE
    assert common.MAX_UPSAMPLE == limits.MAX_UPSAMPLE and common.check_work_size is limits.check_work_size
    assert calibration.MAX_NOLL_INDEX == limits.MAX_NOLL_INDEX
    assert jsontext.MAX_JSON_DEPTH == limits.MAX_JSON_DEPTH and importers.MAX_CSV_LINES == limits.MAX_CSV_LINES
    assert options.MAX_INT_DIGITS == limits.MAX_INT_DIGITS
    assert illuminate_connection.MAX_REPLY_LINES == limits.MAX_REPLY_LINES


@pytest.mark.parametrize(
    "content, message",
    [
        ("[1, 2]", "one JSON object"),
        ('{"camera_pixel_um": [1]}', "camera_pixel_um"),
        ('{"objective_na": "wide"}', "objective_na"),
        ('{"led_on_axis": [NaN, 1]}', "invalid number"),
        ('{"magnification": -4}', "magnification"),
        ('{"sample": 5}', "sample"),
        ('{"led_pitch_mm": 1e400}', "invalid number"),
    ],
)
def test_microscope_json_of_the_wrong_type(capsys, tmp_path, content, message):
    (tmp_path / "m.json").write_text(content)
    code, errors = _cli(capsys, "acquire", "--simulate", "--sim-no-wait", "--out", tmp_path / "a.tif",
                        "--microscope", tmp_path / "m.json")
    assert code == 2 and len(errors) == 1 and message in errors[0], errors


@pytest.mark.parametrize(
    "content, message",
    [
        ("[1]", "JSON object"),
        ('{"leds": 5, "led_set": "list"}', "leds"),
        ('{"leds": [[1, 2, 3]], "led_set": "list"}', "leds"),
        ('{"square_size": "x"}', "square_size"),
        ('{"roi": 5}', "roi"),
        ('{"auto_exposure_target": "x"}', "auto_exposure_target"),
    ],
)
def test_plan_json_of_the_wrong_type(capsys, tmp_path, content, message):
    (tmp_path / "p.json").write_text(content)
    code, errors = _cli(capsys, "acquire", "--simulate", "--sim-no-wait", "--out", tmp_path / "a.tif",
                        "--plan", tmp_path / "p.json")
    assert code == 2 and len(errors) == 1 and message in errors[0], errors


def test_led_cli_timeout_nan_is_refused(capsys):
    code, errors = _cli(capsys, "led", "--port", "/dev/null", "--timeout-s", "nan", "about")
    assert code == 2 and len(errors) == 1 and "finite" in errors[0]


# ------------------------------------------------------------------ 9, 10: garbage and leftovers


def test_all_dark_frames_are_refused_by_uafp(tmp_path):
    from uafp_gui.errors import ReconstructionError
    from uafp_gui.recon.uafp import UafpReconstruction, UafpSettings

    path = tmp_path / "dark.tif"
    write_dataset(path, make_meta(4), np.zeros((4, 16, 16), np.uint16))
    recon = UafpReconstruction.from_dataset(read_dataset(path), UafpSettings(upsample=2, device="cpu"))
    with pytest.raises(ReconstructionError, match="dark level"):
        list(recon.run(1))


def test_a_tiny_amplitude_is_not_scored(tmp_path):
    from uafp_gui.cli.score import score_folders
    from uafp_gui.io.result import write_result

    truth = _calibration(extra={"synthetic_aperture_na": 0.3, "simulation": {"wavelength_um": 0.5}})
    image = np.ones((1, 1), np.float32)
    write_result(tmp_path / "r", image, image, *_images(1.0)[2:], _calibration())
    write_result(tmp_path / "t", *_images(1.0), truth)
    with pytest.raises(DatasetError, match="too small to score"):
        score_folders(tmp_path / "r", tmp_path / "t")


def test_a_broken_truth_folder_is_a_typed_error(tmp_path):
    from uafp_gui.cli.score import score_folders
    from uafp_gui.io.result import write_result

    write_result(tmp_path / "r", *_images(1.0), _calibration())
    bad = _calibration(extra={"synthetic_aperture_na": "wide", "simulation": []})
    write_result(tmp_path / "t", *_images(1.0), bad)
    with pytest.raises(DatasetError, match="not a ground-truth folder"):
        score_folders(tmp_path / "r", tmp_path / "t")


def test_a_partial_dataset_below_half_needs_allow_partial(capsys, tmp_path):
    path = tmp_path / "cut.tif"
    with DatasetWriter(path, make_meta(9)) as writer:
        writer.append(np.full((16, 16), 500, np.uint16))
    code, errors = _cli(capsys, "reconstruct", path, "--out", tmp_path / "r", "--iterations", "1")
    assert code == 2 and "1 of 9 planned frames" in errors[0] and "--allow-partial" in errors[0]
    assert not (tmp_path / "r").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_acquiring_into_a_read_only_folder_fails_before_the_camera(capsys, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        code, errors = _cli(capsys, "acquire", "--simulate", "--sim-no-wait", "--out", folder / "a.tif")
    finally:
        folder.chmod(0o755)
    assert code == 2 and "no permission" in errors[0] and "--resume" not in errors[0]


def test_acquiring_into_a_missing_folder_fails_before_the_camera(capsys, tmp_path, monkeypatch):
    from uafp_gui.simulated import microscope

    monkeypatch.setattr(microscope, "open_simulated_microscope",
                        lambda *a, **k: pytest.fail("the camera was opened"))
    code, errors = _cli(capsys, "acquire", "--simulate", "--sim-no-wait", "--out", tmp_path / "nope" / "a.tif")
    assert code == 2 and "no folder" in errors[0] and "--resume" not in errors[0]


@pytest.mark.parametrize("pattern", ["inf,3", "nan,3", "3.5,2", "1,2,3", "a,b", "3"])
def test_a_micromanager_led_pattern_must_be_whole_row_col_pairs(pattern):
    """Found by the importer fuzz: 'inf,3' escaped as a raw OverflowError, '3.5,2' was taken as LED (3, 2)."""
    from uafp_gui.io.import_mm import _parse_pattern

    assert _parse_pattern("3,4;3.0,5", "frame 0") == [[3, 4], [3, 5]]
    with pytest.raises(DatasetError, match="whole numbers"):
        _parse_pattern(pattern, "frame 0")
