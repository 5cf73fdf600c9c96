"""Issue 14: every reader, every reply, every write - no hang, no raw traceback, nothing lost.

One test (or a few) per class of the issue; the property-based fuzz suite is in
tests/test_fuzz.py (slow lane)."""

from __future__ import annotations

import os
import stat
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile

from uafp_gui.errors import DatasetError
from uafp_gui.io import dataset as dataset_module
from uafp_gui.io.dataset import (
    DatasetMeta,
    DatasetWriter,
    FrameSpec,
    PartialDatasetWarning,
    read_dataset,
    write_dataset,
)


def make_meta(frame_count: int = 4) -> DatasetMeta:
    return DatasetMeta(
        wavelength_um=0.532, objective_na=0.1, magnification=4.0, camera_pixel_um=3.45, led_pitch_mm=4.0,
        led_height_mm=90.0, led_array_shape=(32, 32), led_on_axis=(15.5, 16.0),
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
    monkeypatch.setenv(dataset_module.MAX_DATASET_BYTES_ENV, str(64 * 64 * 2 * 3))
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
    from uafp_gui.io.result import Calibration, LedGeometry

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
    from uafp_gui.devices.illuminate import IlluminateConnection
    from uafp_gui.devices.led_array import LedArrayTimeout

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
    from uafp_gui.devices.illuminate import IlluminateConnection
    from uafp_gui.devices.led_array import LedArrayError

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
    from uafp_gui.devices.led_array import LedArrayError

    with pytest.raises(LedArrayError):
        LedArrayProperties.from_pprops(reply, None)


@pytest.mark.parametrize("reply", ["lit.x", "lot.1", "lit.1.99999", "lit.-1", "lit.1e3", "lit.\u00b2"])
def test_odd_plit_replies_are_typed_errors(reply):
    from uafp_gui.devices.illuminate import SimulatedLedArray
    from uafp_gui.devices.led_array import LedArrayError

    with SimulatedLedArray(shape=(8, 8)) as array:
        array._connection.command = lambda line, timeout_s=None: [reply]
        with pytest.raises(LedArrayError, match="plit"):
            array.read_lit()


def test_a_device_that_only_says_the_terminator_is_not_an_led_array():
    from uafp_gui.devices.illuminate import IlluminateConnection
    from uafp_gui.devices.led_array import LedArrayNotFound

    class EmptyReplies(SlowPort):
        def write(self, data: bytes) -> int:
            self._scheduled.append((0.0, b"-==-\n"))
            return len(data)

    connection = IlluminateConnection(
        "fake", timeout_s=0.2, boot_timeout_s=0.5, open_port=lambda name: EmptyReplies({})
    )
    with pytest.raises(LedArrayNotFound, match="not an illuminate LED array"):
        connection.open()
