"""The `uafp` command line: every subcommand's help, and corrupt input as one error line, never a traceback.

Each corrupt input goes through the real entry point `uafp_gui.cli.main([...])` (and a few through
`python -m uafp_gui` in a subprocess): exit code 2 and exactly one line on stderr that starts with
`uafp COMMAND: error:`. The datasets are what a third-party script writes: a plain TIFF stack
(tifffile) and a sidecar JSON typed out here per spec/dataset.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from uafp_gui.cli import build_parser, main

REPO_ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("single_thread")


def sidecar_dict(frame_count: int = 3, **changes) -> dict:
    data = {
        "format": "uafp-dataset",
        "version": 1,
        "wavelength_um": 0.532,
        "objective_na": 0.1,
        "magnification": 2.0,
        "camera_pixel_um": 3.69,
        "led_pitch_mm": 4.0,
        "led_height_mm": 90.0,
        "led_array_shape": [32, 32],
        "led_on_axis": [16, 16],
        "camera_offset": 100,
        "frames": [{"leds": [[16, 16 + k]], "exposure_ms": 10.0} for k in range(frame_count)],
    }
    data.update(changes)
    return data


def camera_frames(frame_count: int = 3, size: int = 32, dtype=np.uint16) -> np.ndarray:
    rng = np.random.default_rng(5)
    return rng.integers(200, 4000, size=(frame_count, size, size)).astype(dtype)


def write_third_party(folder: Path, name: str, frames: np.ndarray, sidecar: dict | str | None) -> Path:
    path = folder / f"{name}.tif"
    tifffile.imwrite(path, frames, photometric="minisblack")
    if sidecar is not None:
        text = sidecar if isinstance(sidecar, str) else json.dumps(sidecar)
        path.with_suffix(".json").write_text(text)
    return path


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_error_line(code: int, err: str, command: str, *fragments: str) -> str:
    assert "Traceback" not in err
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith(f"uafp {command}: error: "), lines[0]
    assert code == 2
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def simulated(tmp_path_factory, single_thread):
    """A tiny simulated dataset, its truth, and a classic result folder (built through the CLI)."""
    from uafp_gui.simulate import PRESETS, simulate, write_simulation

    folder = tmp_path_factory.mktemp("simulated")
    simulation = simulate(replace(PRESETS["ideal"], frame_size=32, led_grid=3))
    dataset = folder / "small.tif"
    truth = write_simulation(simulation, dataset)
    assert main(["reconstruct", str(dataset), "--method", "classic", "--iterations", "2",
                 "--out", str(folder / "result"), "--no-report", "--device", "cpu"]) == 0  # fmt: skip
    return {"dataset": dataset, "truth": truth, "result": folder / "result"}


# ------------------------------------------------------------------------------------ help


def _subcommand_paths() -> list[tuple[str, ...]]:
    """Every subcommand (and nested subcommand, e.g. `import zheng`) the parser knows."""
    paths = []

    def walk(parser: argparse.ArgumentParser, prefix: tuple[str, ...]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    paths.append(prefix + (name,))
                    walk(sub, prefix + (name,))

    walk(build_parser(), ())
    return paths


SUBCOMMAND_PATHS = _subcommand_paths()


def test_the_must_show_subcommands_exist():
    names = {path[0] for path in SUBCOMMAND_PATHS}
    assert {"simulate", "reconstruct", "import", "score"} <= names
    assert ("import", "zheng") in SUBCOMMAND_PATHS


@pytest.mark.parametrize("path", SUBCOMMAND_PATHS, ids=[" ".join(p) for p in SUBCOMMAND_PATHS])
def test_every_subcommand_has_help(path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*path, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: uafp " + " ".join(path))
    assert len(out.splitlines()) >= 3


def test_top_level_help_and_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in ("simulate", "reconstruct", "import", "score"):
        assert name in out
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.startswith("uafp_gui ")
    assert main([]) == 1  # no command: help, non-zero


# ------------------------------------------------------------------- corrupt dataset input


def test_reference_third_party_dataset_is_accepted(tmp_path, capsys):
    """The corrupt cases below are each one change away from this valid dataset."""
    path = write_third_party(tmp_path, "good", camera_frames(), sidecar_dict())
    code, out, err = run_cli(capsys, "reconstruct", path, "--method", "classic", "--iterations", "1",
                             "--out", tmp_path / "r", "--no-report", "--device", "cpu")  # fmt: skip
    assert code == 0, err
    assert err == ""
    assert (tmp_path / "r" / "amplitude.tif").exists()
    assert f"wrote {tmp_path / 'r'}" in out


def test_tiff_truncated_inside_the_first_frame(tmp_path, capsys):
    path = write_third_party(tmp_path, "cut", camera_frames(), sidecar_dict())
    data = path.read_bytes()
    path.write_bytes(data[: 32 * 32 * 2 // 2])  # half of frame 0's pixels
    code, _, err = run_cli(capsys, "reconstruct", path, "--method", "classic")
    assert_one_error_line(code, err, "reconstruct", "cut.tif", "no complete frame")


def test_tiff_truncated_inside_the_header(tmp_path, capsys):
    path = write_third_party(tmp_path, "head", camera_frames(), sidecar_dict())
    path.write_bytes(path.read_bytes()[:6])
    code, _, err = run_cli(capsys, "reconstruct", path, "--method", "classic")
    assert_one_error_line(code, err, "reconstruct", "head.tif")


def test_tiff_truncated_after_some_frames_opens_as_a_partial_dataset(tmp_path, capsys):
    """Spec section 1: a partially written dataset still opens; the CLI says so in one line."""
    frames = camera_frames(4)
    path = write_third_party(tmp_path, "partial", frames, sidecar_dict(4))
    with tifffile.TiffFile(path) as tif:
        cut = tif.pages[2].offset  # end of page 1's directory: pages 0 and 1 stay intact
    path.write_bytes(path.read_bytes()[:cut])
    code, out, err = run_cli(capsys, "reconstruct", path, "--method", "classic", "--iterations", "1",
                             "--out", tmp_path / "r", "--no-report", "--device", "cpu")  # fmt: skip
    assert code == 0
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("uafp reconstruct: warning: ")
    assert "partial dataset: 2 of 4" in lines[0]
    assert (tmp_path / "r" / "calibration.json").exists()


def test_not_a_tiff(tmp_path, capsys):
    path = tmp_path / "text.tif"
    path.write_text("these are not pixels\n" * 20)
    path.with_suffix(".json").write_text(json.dumps(sidecar_dict()))
    code, _, err = run_cli(capsys, "reconstruct", path, "--method", "classic")
    assert_one_error_line(code, err, "reconstruct", "not a TIFF")


@pytest.mark.parametrize("cut", [-3, 40], ids=["cut-at-end", "cut-early"])
def test_invalid_sidecar_json(tmp_path, capsys, cut):
    text = json.dumps(sidecar_dict(), indent=1)
    path = write_third_party(tmp_path, "badjson", camera_frames(), text[:cut])
    code, _, err = run_cli(capsys, "reconstruct", path, "--method", "classic")
    assert_one_error_line(code, err, "reconstruct", "badjson.json", "not valid JSON", "line")


def test_sidecar_that_is_not_an_object(tmp_path, capsys):
    path = write_third_party(tmp_path, "list", camera_frames(), "[1, 2, 3]")
    code, _, err = run_cli(capsys, "reconstruct", path, "--method", "classic")
    assert_one_error_line(code, err, "reconstruct", "list.json")


def test_more_frames_than_metadata_entries(tmp_path, capsys):
    path = write_third_party(tmp_path, "more", camera_frames(4), sidecar_dict(3))
    code, _, err = run_cli(capsys, "reconstruct", path, "--method", "classic")
    assert_one_error_line(code, err, "reconstruct", "more than 3 frames", "only 3")


def test_nan_pixels(tmp_path, capsys):
    frames = camera_frames(dtype=np.float32)
    frames[2, 5, 7] = np.nan
    frames[2, 6, 7] = np.inf
    path = write_third_party(tmp_path, "nan", frames, sidecar_dict())
    code, _, err = run_cli(capsys, "reconstruct", path, "--method", "classic")
    assert_one_error_line(code, err, "reconstruct", "frame 2", "NaN")


@pytest.mark.parametrize("wavelength", [0, -0.532])
def test_non_positive_wavelength(tmp_path, capsys, wavelength):
    path = write_third_party(tmp_path, "wl", camera_frames(), sidecar_dict(wavelength_um=wavelength))
    code, _, err = run_cli(capsys, "reconstruct", path, "--method", "classic")
    assert_one_error_line(code, err, "reconstruct", "wavelength_um must be > 0")


@pytest.mark.parametrize(
    "changes, fragment",
    [
        ({"objective_na": 1.4}, "objective_na"),
        ({"wavelength_um": "green"}, "wavelength_um"),
        ({"frames": [{"leds": [[16, 40]], "exposure_ms": 10}] * 3}, "outside"),
        ({"format": "something-else"}, "format"),
        ({"version": 2}, "version"),
    ],
    ids=["na", "string-wavelength", "led-outside-array", "format", "version"],
)
def test_other_invalid_metadata(tmp_path, capsys, changes, fragment):
    path = write_third_party(tmp_path, "meta", camera_frames(), sidecar_dict(**changes))
    code, _, err = run_cli(capsys, "reconstruct", path, "--method", "classic")
    assert_one_error_line(code, err, "reconstruct", fragment)


def test_stack_without_any_metadata(tmp_path, capsys):
    path = write_third_party(tmp_path, "bare", camera_frames(), None)
    code, _, err = run_cli(capsys, "reconstruct", path, "--method", "classic")
    assert_one_error_line(code, err, "reconstruct", "bare.json")


def test_missing_dataset_file(tmp_path, capsys):
    code, _, err = run_cli(capsys, "reconstruct", tmp_path / "nowhere.tif", "--method", "classic")
    assert_one_error_line(code, err, "reconstruct", "nowhere.tif", "not found")


def test_frames_all_below_the_dark_level(tmp_path, capsys):
    path = write_third_party(tmp_path, "dark", camera_frames(), sidecar_dict(camera_offset=60000))
    code, _, err = run_cli(capsys, "reconstruct", path, "--method", "classic", "--out", tmp_path / "r")
    assert_one_error_line(code, err, "reconstruct", "camera_offset")
    assert not (tmp_path / "r").exists()


def test_multiplexed_dataset_with_classic(tmp_path, capsys):
    frames_meta = [{"leds": [[16, 16], [16, 17]], "exposure_ms": 10.0}] * 3
    path = write_third_party(tmp_path, "mux", camera_frames(), sidecar_dict(frames=frames_meta))
    code, _, err = run_cli(capsys, "reconstruct", path, "--method", "classic")
    assert_one_error_line(code, err, "reconstruct", "multiplexed")


def test_outer_leds_beyond_the_object_bandwidth(tmp_path, capsys):
    path = write_third_party(tmp_path, "wide", camera_frames(), sidecar_dict(led_height_mm=5.0))
    code, _, err = run_cli(capsys, "reconstruct", path, "--method", "classic", "--upsample", "1")
    assert_one_error_line(code, err, "reconstruct", "upsample")


@pytest.mark.parametrize(
    "options, fragment",
    [
        (["--upsample", "0"], "--upsample"),
        (["--iterations", "0"], "--iterations"),
        (["--device", "tpu"], "unknown device"),
    ],
)
def test_invalid_reconstruct_options(tmp_path, capsys, options, fragment):
    path = write_third_party(tmp_path, "good", camera_frames(), sidecar_dict())
    code, _, err = run_cli(capsys, "reconstruct", path, "--method", "classic", *options)
    assert_one_error_line(code, err, "reconstruct", fragment)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_cuda_requested_without_a_gpu(tmp_path, capsys):
    path = write_third_party(tmp_path, "good", camera_frames(), sidecar_dict())
    code, _, err = run_cli(capsys, "reconstruct", path, "--method", "classic", "--device", "cuda")
    assert_one_error_line(code, err, "reconstruct", "CUDA")


def test_output_folder_that_cannot_be_created_fails_before_reconstructing(tmp_path, capsys, monkeypatch):
    import uafp_gui.recon.classic as classic

    path = write_third_party(tmp_path, "good", camera_frames(), sidecar_dict())
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")

    def must_not_run(*args, **kwargs):
        raise AssertionError("the solver ran although the output folder is unusable")

    monkeypatch.setattr(classic.ClassicSolver, "run", must_not_run)
    for out in (blocker, blocker / "sub"):
        code, _, err = run_cli(capsys, "reconstruct", path, "--method", "classic", "--out", out)
        assert_one_error_line(code, err, "reconstruct", str(blocker))


@pytest.mark.parametrize("content", ["{not json", '{"format": "uafp-dataset"}'], ids=["invalid", "wrong-format"])
def test_bad_calibration_file(tmp_path, capsys, content):
    path = write_third_party(tmp_path, "good", camera_frames(), sidecar_dict())
    calibration = tmp_path / "calibration.json"
    calibration.write_text(content)
    code, _, err = run_cli(capsys, "reconstruct", path, "--method", "classic", "--calibration", calibration)
    assert_one_error_line(code, err, "reconstruct", "calibration.json")


# ---------------------------------------------------------------------------------- score


def test_score_works_on_a_real_result(simulated, capsys):
    code, out, err = run_cli(capsys, "score", simulated["result"], simulated["truth"], "--json")
    assert code == 0, err
    scores = json.loads(out)
    assert np.isfinite(scores["amplitude_psnr_db"]) and np.isfinite(scores["phase_rmse_rad"])


def test_score_of_a_folder_that_is_not_a_result(simulated, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run_cli(capsys, "score", empty, simulated["truth"])
    assert_one_error_line(code, err, "score", "empty")


def test_score_of_a_dataset_file_instead_of_a_folder(simulated, capsys):
    code, _, err = run_cli(capsys, "score", simulated["dataset"], simulated["truth"])
    assert_one_error_line(code, err, "score", "small.tif")


def test_score_against_a_result_that_is_not_a_truth(simulated, capsys):
    code, _, err = run_cli(capsys, "score", simulated["result"], simulated["result"])
    assert_one_error_line(code, err, "score", "ground-truth")


def test_score_of_missing_folders(simulated, tmp_path, capsys):
    code, _, err = run_cli(capsys, "score", tmp_path / "gone", simulated["truth"])
    assert_one_error_line(code, err, "score", "gone")
    code, _, err = run_cli(capsys, "score", simulated["result"], tmp_path / "gone")
    assert_one_error_line(code, err, "score", "gone")


def test_score_of_a_result_with_nan_pixels(simulated, tmp_path, capsys):
    import shutil

    from uafp_gui.io.result import read_result, write_result

    broken = tmp_path / "nan_result"
    shutil.copytree(simulated["result"], broken)
    result = read_result(broken)
    amplitude = result.amplitude.copy()
    amplitude[3, 4] = np.nan
    with pytest.warns(UserWarning, match="NaN"):  # a diverged run is still written whole, with a warning
        write_result(broken, amplitude, result.phase, result.pupil[0], result.pupil[1], result.calibration)
    code, _, err = run_cli(capsys, "score", broken, simulated["truth"])
    assert_one_error_line(code, err, "score", "NaN")


def test_score_of_a_result_with_corrupt_calibration(simulated, tmp_path, capsys):
    import shutil

    broken = tmp_path / "bad_calibration"
    shutil.copytree(simulated["result"], broken)
    (broken / "calibration.json").write_text('{"format": "uafp-calibration", "version": 1,')
    code, _, err = run_cli(capsys, "score", broken, simulated["truth"])
    assert_one_error_line(code, err, "score", "calibration.json")


def test_score_of_a_result_with_a_truncated_tiff(simulated, tmp_path):
    """In a subprocess: under pytest, library log records go to pytest's handler, not stderr."""
    import shutil

    broken = tmp_path / "cut_result"
    shutil.copytree(simulated["result"], broken)
    phase = broken / "phase.tif"
    phase.write_bytes(phase.read_bytes()[:300])
    completed = _module_run("score", broken, simulated["truth"], cwd=tmp_path)
    assert_one_error_line(completed.returncode, completed.stderr, "score", "phase.tif")


# ----------------------------------------------------------------------- simulate, import


def test_simulate_into_a_missing_folder(tmp_path, capsys):
    code, _, err = run_cli(capsys, "simulate", tmp_path / "no" / "run.tif")
    assert_one_error_line(code, err, "simulate", "does not exist")


@pytest.mark.parametrize(
    "options, fragment",
    [(["--zernike", "4:1.5"], "J=RAD"), (["--zernike", "40=1"], "Noll"), (["--frame-size", "8"], "frame-size")],
)
def test_simulate_invalid_options(tmp_path, capsys, options, fragment):
    code, _, err = run_cli(capsys, "simulate", tmp_path / "run.tif", *options)
    assert_one_error_line(code, err, "simulate", fragment)
    assert not (tmp_path / "run.tif").exists()


def test_simulate_onto_a_folder_or_under_a_file(tmp_path, capsys):
    (tmp_path / "taken.tif").mkdir()
    code, _, err = run_cli(capsys, "simulate", tmp_path / "taken.tif")
    assert_one_error_line(code, err, "simulate", "is a folder")
    (tmp_path / "plain.txt").write_text("x")
    code, _, err = run_cli(capsys, "simulate", tmp_path / "plain.txt" / "run.tif")
    assert_one_error_line(code, err, "simulate", "plain.txt")


def test_import_onto_a_folder_with_overwrite(bloodsmear_mat, tmp_path, capsys):
    (tmp_path / "taken.tif").mkdir()
    code, _, err = run_cli(capsys, "import", "zheng", bloodsmear_mat, tmp_path / "taken.tif", "--overwrite")
    assert_one_error_line(code, err, "import", "taken.tif")


def test_import_of_missing_or_wrong_files(tmp_path, capsys):
    code, _, err = run_cli(capsys, "import", "zheng", tmp_path / "none.mat", tmp_path / "out.tif")
    assert_one_error_line(code, err, "import", "none.mat")
    not_mat = write_third_party(tmp_path, "stack", camera_frames(), None)
    code, _, err = run_cli(capsys, "import", "zheng", not_mat, tmp_path / "out.tif")
    assert_one_error_line(code, err, "import", "stack.tif")


# ------------------------------------------------------------------------------ subprocess


def _module_run(*argv, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "uafp_gui", *map(str, argv)],
        capture_output=True, text=True, cwd=cwd, env=env, timeout=300,
    )  # fmt: skip


def test_corrupt_inputs_through_python_dash_m(tmp_path):
    """The installed entry point, end to end in a fresh interpreter: exit 2, one line, no traceback."""
    truncated = write_third_party(tmp_path, "truncated", camera_frames(), sidecar_dict())
    truncated.write_bytes(truncated.read_bytes()[:700])
    invalid = write_third_party(tmp_path, "invalid", camera_frames(), json.dumps(sidecar_dict())[:-10])
    for path, fragment in ((truncated, "no complete frame"), (invalid, "not valid JSON")):
        completed = _module_run("reconstruct", path.name, "--method", "classic", cwd=tmp_path)
        assert completed.returncode == 2
        assert "Traceback" not in completed.stderr
        lines = completed.stderr.strip().splitlines()
        assert len(lines) == 1, completed.stderr
        assert lines[0].startswith("uafp reconstruct: error: ") and fragment in lines[0]
        assert completed.stdout == ""


def test_only_the_cli_words_an_acquisition_failure_as_resume(tmp_path):
    """The engine's error carries what is saved; the CLI says --resume, the GUI says it in its own words."""
    from uafp_gui.cli import error_line
    from uafp_gui.errors import CameraTimeoutError, ConfigError

    out = tmp_path / "run.tif"
    error = CameraTimeoutError("no frame. Acquisition stopped: 4 of 25 frames are saved", path=out, frames_saved=4)
    assert error.resumable and "--resume" not in str(error)
    assert error_line("acquire", error).endswith("run the same command with --resume to acquire the rest")
    assert f"uafp acquire --out {out}` with --resume" in error_line("reconstruct", error)
    assert error_line("acquire", ConfigError("bad")) == "bad"
    assert not CameraTimeoutError("x", path=out, frames_saved=0).resumable
