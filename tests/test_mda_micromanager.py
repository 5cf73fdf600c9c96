"""Micro-Manager ecosystem: FP acquisition as a useq MDASequence through pymmcore-plus's own runner
(`core.mda.run`), written by our dataset sink and by pymmcore-plus's own OME-TIFF writers, and
`uafp import micromanager` of those files (and of an MMStack file with per-image metadata).

Micro-Manager's C++ demo adapters are not installed here (and cannot be downloaded in tests), so
the "demo configuration" is pymmcore-plus's UniMMCore with uafp's simulated FP camera and LED
array as Python devices: the same core API, runner, engine protocol and writers.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import tifffile

from uafp_gui.acquisition.mda_engine import FpEngine
from uafp_gui.acquisition.plan import AcquisitionPlan, MicroscopeDescription
from uafp_gui.acquisition.sequence import fp_sequence
from uafp_gui.acquisition.sinks import DatasetSink
from uafp_gui.cli import main
from uafp_gui.devices.mm_led import format_pattern
from uafp_gui.io.dataset import read_dataset
from uafp_gui.simulate import PRESETS
from uafp_gui.simulated.microscope import open_simulated_microscope, simulated_camera

useq = pytest.importorskip("useq")
pytestmark = pytest.mark.usefixtures("single_thread")

SETTINGS = replace(PRESETS["ideal"], frame_size=32, upsample=2, photons_per_pixel=20000.0, seed=3)
MICROSCOPE = MicroscopeDescription.from_simulation(SETTINGS)
PLAN = AcquisitionPlan(square_size=5, brightfield_exposure_ms=2.0, darkfield_exposure_ms=6.0)


@pytest.fixture
def core():
    core, leds = open_simulated_microscope(SETTINGS, realtime=False)
    core.definePixelSizeConfig("uafp")  # as the Hardware Configuration Wizard would
    core.setPixelSizeUm("uafp", MICROSCOPE.sample_pixel_um)
    core.setPixelSizeConfig("uafp")
    core.mda.set_engine(FpEngine(core))
    yield core
    leds.close()


class EventLog:
    """A pymmcore-plus handler recording every frame's event metadata."""

    def __init__(self):
        self.events = []

    def frameReady(self, image, event, meta):  # noqa: N802
        self.events.append((dict(event.metadata), meta.get("exposure_ms"), float(image.mean())))


def test_fp_acquisition_runs_as_an_mda_sequence_into_a_valid_dataset(core, tmp_path):
    sequence = fp_sequence(PLAN, MICROSCOPE, core=core)
    assert isinstance(sequence, useq.MDASequence) and sequence.sizes["t"] == 25
    sink, log = DatasetSink(tmp_path / "run.tif"), EventLog()
    core.mda.run(sequence, output=[sink, log])
    assert sink.error is None and sink.frames_written == 25
    dataset = read_dataset(tmp_path / "run.tif")
    assert dataset.complete and dataset.frames.shape == (25, 32, 32) and dataset.frames.dtype == np.uint16
    planned = PLAN.frame_specs(MICROSCOPE)
    assert [f.leds for f in dataset.meta.frames] == [s.leds for s in planned]
    assert dataset.meta.bit_depth == SETTINGS.bit_depth and dataset.meta.camera_offset == SETTINGS.camera_offset
    # every event carried its LED pattern in its metadata, in dataset order, with its exposure
    assert [m["uafp_frame"] for m, _, _ in log.events] == list(range(25))
    assert [m["uafp_leds"] for m, _, _ in log.events] == [format_pattern(s.leds) for s in planned]
    assert [e for _, e, _ in log.events] == [s.exposure_ms for s in planned]
    # and the camera saw exactly those LEDs: each frame matches the noise-free rendering of its LED
    renderer = simulated_camera(core).renderer
    for frame, spec in zip(dataset.frames, planned, strict=True):
        expected = renderer.expected_counts_per_ms(spec.leds) * spec.exposure_ms + SETTINGS.camera_offset
        assert np.corrcoef(frame.ravel(), expected.ravel())[0, 1] > 0.95


@pytest.mark.slow  # end to end: import and reconstruct: the slow lane
def test_pymmcore_plus_ome_tiff_is_imported_and_reconstructed(core, tmp_path, capsys):
    """pymmcore-plus's own writer (core.mda.run(..., output="x.ome.tif"), ome-writers) stores the
    sequence; the import takes frames, LED patterns and optics from it, and it reconstructs."""
    acquisition = tmp_path / "mm_acq"
    acquisition.mkdir()
    sink = DatasetSink(tmp_path / "direct.tif")
    core.mda.run(fp_sequence(PLAN, MICROSCOPE, core=core), output=[str(acquisition / "fp.ome.tif"), sink])
    with tifffile.TiffFile(acquisition / "fp.ome.tif") as tif:  # pymmcore-plus's file, as written
        assert tif.is_ome and tif.series[0].shape == (25, 32, 32)
    out = tmp_path / "imported.tif"
    assert main(["import", "micromanager", str(acquisition), str(out)]) == 0
    assert "25 frames 32x32 uint16" in capsys.readouterr().out
    imported, direct = read_dataset(out), read_dataset(tmp_path / "direct.tif")
    np.testing.assert_array_equal(imported.frames, direct.frames)
    assert [f.to_dict() for f in imported.meta.frames] == [f.to_dict() for f in direct.meta.frames]
    assert imported.meta.sample_pixel_um == pytest.approx(MICROSCOPE.sample_pixel_um)

    result = tmp_path / "r"
    args = [
        "reconstruct",
        str(out),
        "--method",
        "classic",
        "--iterations",
        "6",
        "--upsample",
        "2",
        "--out",
        str(result),
    ]
    assert main([*args, "--device", "cpu", "--no-report"]) == 0
    from uafp_gui.io.result import read_result
    from uafp_gui.metrics import score
    from uafp_gui.sample import load_sample

    reconstruction = read_result(result)
    truth = load_sample(reconstruction.amplitude.shape)
    reconstructed = score(truth, reconstruction.object_field)
    # the bare bright-field frame, upsampled, is what the data give without FP
    raw = np.sqrt(np.clip(imported.normalised_frames()[0], 0, None))
    baseline = score(truth, np.kron(raw, np.ones((2, 2))).astype(np.complex64))
    assert reconstructed.amplitude_ssim > baseline.amplitude_ssim + 0.1, (reconstructed, baseline)


@pytest.mark.filterwarnings("ignore:The 'pymmcore_plus.mda.handlers' module is deprecated:FutureWarning")
def test_pymmcore_plus_ometiff_handler_file_needs_a_csv_and_geometry(core, tmp_path, capsys):
    """pymmcore-plus's (older) OMETiffWriter handler stores no sequence metadata: the LED patterns come
    from a CSV and the optics from a geometry file, as for any Micro-Manager acquisition."""
    handlers = pytest.importorskip("pymmcore_plus.mda.handlers")
    OMETiffWriter = handlers.OMETiffWriter  # noqa: N806

    path = tmp_path / "handler.ome.tif"
    core.mda.run(fp_sequence(PLAN, MICROSCOPE, core=core), output=[OMETiffWriter(path)])
    out = tmp_path / "h.tif"
    assert main(["import", "micromanager", str(path), str(out)]) == 2
    assert "--geometry" in capsys.readouterr().err
    geometry = tmp_path / "geometry.json"
    fields = MICROSCOPE.to_dict()
    fields.pop("glass"), fields.pop("sample")
    geometry.write_text(json.dumps({**fields, "camera_offset": SETTINGS.camera_offset}))
    assert main(["import", "micromanager", str(path), str(out), "--geometry", str(geometry)]) == 2
    assert "--leds leds.csv" in capsys.readouterr().err
    planned = PLAN.frame_specs(MICROSCOPE)
    csv_path = tmp_path / "leds.csv"
    csv_path.write_text(
        "row,col,exposure_ms\n" + "".join(f"{s.leds[0][0]},{s.leds[0][1]},{s.exposure_ms}\n" for s in planned)
    )
    assert (
        main(["import", "micromanager", str(path), str(out), "--geometry", str(geometry), "--leds", str(csv_path)]) == 0
    )
    dataset = read_dataset(out)
    assert [f.leds for f in dataset.meta.frames] == [s.leds for s in planned]
    assert dataset.meta.frames[-1].exposure_ms == 6.0
    assert tifffile.imread(path).shape == dataset.frames.shape


def test_mmstack_per_image_metadata_gives_the_led_patterns(tmp_path):
    """Micro-Manager Studio's MMStack files carry each image's device properties as JSON in the
    MicroManagerMetadata tag (51123): the LED device's Pattern and Exposure-ms are read from there."""
    from uafp_gui.io.import_mm import import_micromanager

    folder = tmp_path / "FP_1"
    folder.mkdir()
    rng = np.random.default_rng(0)
    frames = rng.integers(100, 4000, (4, 16, 16), dtype=np.uint16)
    patterns = ["2,2", "2,3", "3,2", "1,1;3,3"]
    tifffile.imwrite(folder / "FP_1_MMStack_Pos0.ome.tif", frames, ome=True, metadata={"axes": "TYX"})
    # the OME-XML of that series, then the pages again with Micro-Manager's per-image metadata tag
    with tifffile.TiffFile(folder / "FP_1_MMStack_Pos0.ome.tif") as tif:
        ome_xml = tif.ome_metadata
    with tifffile.TiffWriter(folder / "FP_1_MMStack_Pos0.ome.tif") as tif:
        for k, frame in enumerate(frames):
            image_meta = json.dumps({"LEDArray-Pattern": patterns[k], "Exposure-ms": 5.0 + k, "Camera": "Cam"})
            tif.write(
                frame,
                description=ome_xml if k == 0 else None,
                metadata=None,
                extratags=[(51123, "s", 0, image_meta, True)],
            )
    geometry = tmp_path / "g.json"
    geometry.write_text(
        json.dumps(
            dict(
                wavelength_um=0.53,
                objective_na=0.1,
                magnification=4,
                camera_pixel_um=3.45,
                led_pitch_mm=4,
                led_height_mm=80,
                led_array_shape=[5, 5],
                led_on_axis=[2, 2],
            )
        )
    )
    out = import_micromanager(folder, tmp_path / "mm.tif", geometry=geometry)
    dataset = read_dataset(out)
    np.testing.assert_array_equal(dataset.frames, frames)
    assert [f.leds for f in dataset.meta.frames] == [((2, 2),), ((2, 3),), ((3, 2),), ((1, 1), (3, 3))]
    assert [f.exposure_ms for f in dataset.meta.frames] == [5.0, 6.0, 7.0, 8.0]
