"""Never lose a result: whatever ends a UA-FP run, the last good state is a complete, readable
result folder whose calibration.json says whether it is partial and why.

Endings pinned here: a cancel mid-run (the GUI's Stop and quit go through `LiveReconstruction`), a loss that
keeps turning NaN, an engine exception, an estimate pushed against its physical bounds (the LED
height can never reach zero), Ctrl-C and SIGTERM to the `uafp reconstruct` process.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from factories import TINY_SETTINGS, dataset_of

from uafp_gui.cli.reconstruct import run_keeping_the_last_good_state
from uafp_gui.errors import ReconstructionError
from uafp_gui.io.result import read_result
from uafp_gui.recon.uafp import UafpReconstruction
from uafp_gui.session.reconstruction import LiveReconstruction, autosave_folder_for
from uafp_gui.simulate import write_simulation

REPO_ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("single_thread")


def assert_complete_partial_result(folder: Path, reason: str, iterations: int | None = None) -> dict:
    """Every file of the result folder reads back, finite, and calibration.json says partial and why."""
    result = read_result(folder)
    assert np.isfinite(result.amplitude).all() and np.isfinite(result.phase).all()
    assert result.calibration.led_geometry.height_mm > 0
    calibration = json.loads((folder / "calibration.json").read_text())
    assert calibration["partial"] is True
    assert calibration["stop_reason"] == reason, calibration.get("stop_detail")
    if iterations is not None:
        assert calibration["iterations"] == iterations
    return calibration


@pytest.mark.slow  # numerical run: the slow lane
def test_a_completed_run_says_it_is_not_partial(tiny):
    recon = UafpReconstruction.from_dataset(dataset_of(tiny), TINY_SETTINGS.replace(iterations=2))
    updates = list(recon.run())
    assert updates[-1].stop_reason == "completed" and not recon.partial
    extra = recon.result().extra
    assert extra["partial"] is False and extra["stop_reason"] == "completed"


@pytest.mark.slow  # numerical run: the slow lane
def test_cancel_mid_run_autosaves_a_complete_partial_result(tiny, tmp_path):
    """The GUI's Stop (and quit, which stops the worker) end `LiveReconstruction.run`: the state is written."""
    job = LiveReconstruction(TINY_SETTINGS.replace(iterations=500), dataset=dataset_of(tiny))
    job.autosave_folder = tmp_path / "autosave"
    seen = []
    for update in job.run():
        seen.append(update.iteration)
        if update.iteration == 3:
            job.stop()
    assert seen[-1] == 3 and job.autosaved == tmp_path / "autosave" and job.autosave_error is None
    calibration = assert_complete_partial_result(job.autosaved, "cancelled", iterations=3)
    assert "stopped at iteration 3" in calibration["stop_detail"]
    # Continue runs on and the next save is complete.
    job.settings = job.settings.replace(iterations=2)
    list(job.run(2))
    assert json.loads((job.autosaved / "calibration.json").read_text())["partial"] is False


@pytest.mark.slow  # numerical run: the slow lane
def test_closing_the_run_generator_still_saves(tiny, tmp_path):
    """Quit while the worker is suspended between updates: the generator is closed, the state still saved."""
    job = LiveReconstruction(TINY_SETTINGS.replace(iterations=500), dataset=dataset_of(tiny))
    job.autosave_folder = tmp_path / "quit"
    run = job.run()
    next(run)
    next(run)
    run.close()
    assert_complete_partial_result(tmp_path / "quit", "cancelled", iterations=2)


def test_autosave_folder_is_next_to_the_dataset_or_in_the_fallback(tmp_path):
    assert autosave_folder_for(tmp_path / "run.tif", tmp_path / "app") == tmp_path / "run_autosave"
    assert autosave_folder_for(None, tmp_path / "app") == tmp_path / "app" / "reconstruction_autosave"
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        try:
            assert autosave_folder_for(locked / "run.tif", tmp_path / "app") == tmp_path / "app" / "run_autosave"
        finally:
            locked.chmod(0o700)


def _poison(recon: UafpReconstruction, monkeypatch, after_iteration: int, how) -> None:
    original = recon.loss

    def loss(frames):
        value = original(frames)
        return how(value) if recon.iteration >= after_iteration else value

    monkeypatch.setattr(recon, "loss", loss)


@pytest.mark.slow  # numerical run: the slow lane
def test_a_loss_that_keeps_turning_nan_ends_the_run_with_the_last_good_state(tiny, tmp_path, monkeypatch):
    recon = UafpReconstruction.from_dataset(dataset_of(tiny), TINY_SETTINGS.replace(iterations=30))
    list(recon.run(3))
    good_object = recon.object.detach().clone()
    good_geometry = recon.model.system.led_geometry()
    _poison(recon, monkeypatch, 3, lambda value: value * float("nan"))
    out = tmp_path / "diverged"
    with pytest.raises(ReconstructionError) as raised:
        run_keeping_the_last_good_state(recon, out, dataset_of(tiny), report=True)
    message = str(raised.value)
    assert "engine" in message and "not of your data" in message and "Try:" in message and str(out) in message
    assert recon.stop_reason == "diverged" and recon.iteration == 3 + TINY_SETTINGS.max_consecutive_rollbacks
    assert torch.equal(recon.object.detach(), good_object) and recon.model.system.led_geometry() == good_geometry
    calibration = assert_complete_partial_result(out, "diverged")
    assert "roll-backs in a row" in calibration["stop_detail"]
    assert (out / "report.png").is_file()


@pytest.mark.slow  # numerical run: the slow lane
def test_an_engine_exception_is_rolled_back_and_reported_as_the_engines(tiny, tmp_path, monkeypatch):
    recon = UafpReconstruction.from_dataset(dataset_of(tiny), TINY_SETTINGS.replace(iterations=30))
    list(recon.run(2))
    calls = []
    original = recon.loss

    def failing_once(frames):
        calls.append(recon.iteration)
        if len(calls) == 1:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return original(frames)

    monkeypatch.setattr(recon, "loss", failing_once)
    updates = list(recon.run(3))
    assert [u.rolled_back for u in updates] == [True, False, False]  # one failure: rolled back, went on
    assert recon.stop_reason == "completed" and recon.learning_rate_factor == 0.5

    def always_failing(frames):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(recon, "loss", always_failing)
    out = tmp_path / "failed"
    with pytest.raises(ReconstructionError, match="fault of the reconstruction, not of your data"):
        run_keeping_the_last_good_state(recon, out, dataset_of(tiny), report=False)
    calibration = assert_complete_partial_result(out, "engine_error", iterations=recon.iteration)
    assert "RuntimeError: CUDA error" in calibration["stop_detail"]


@pytest.mark.slow  # numerical run: the slow lane
def test_the_led_height_cannot_leave_its_physical_range(tiny, tmp_path):
    """Steps of 10 m on the height: the estimate stays in (0.5, 2) x the dataset's height, the result saves."""
    settings = TINY_SETTINGS.replace(iterations=6, lr_height_mm=1e4, geometry_start_fraction=0.0, warmup_iterations=0)
    recon = UafpReconstruction.from_dataset(dataset_of(tiny), settings)
    heights = [u.geometry.height_mm for u in recon.run()]
    low, high = recon.geometry_bounds()["height_mm"]
    nominal = tiny.meta.led_height_mm
    assert (low, high) == (0.5 * nominal, 2.0 * nominal)
    assert all(low <= h <= high for h in heights), heights
    assert max(heights) == high  # the steps reached the bound (the data may pull it back inside by the end)
    # A result whose height sits on the bound says so (not a calibration to trust).
    recon.model.system.set_geometry(replace(recon.model.system.led_geometry(), height_mm=high))
    assert "height_mm" in recon.result().extra["at_bounds"]
    out = run_keeping_the_last_good_state(
        UafpReconstruction.from_dataset(dataset_of(tiny), settings), tmp_path / "r", dataset_of(tiny), report=False
    )
    assert out.exit_code is None and read_result(tmp_path / "r").calibration.led_geometry.height_mm >= low


def test_keyboard_interrupt_mid_iteration_restores_the_last_good_state(tiny, tmp_path, monkeypatch):
    recon = UafpReconstruction.from_dataset(dataset_of(tiny), TINY_SETTINGS.replace(iterations=30))
    list(recon.run(2))
    good_object = recon.object.detach().clone()
    original = recon.loss
    calls = []

    def interrupted(frames):
        calls.append(1)
        if len(calls) == 3:  # mid-epoch: the object has already taken steps
            raise KeyboardInterrupt
        return original(frames)

    monkeypatch.setattr(recon, "loss", interrupted)
    ending = run_keeping_the_last_good_state(recon, tmp_path / "ctrl-c", dataset_of(tiny), report=False)
    assert ending.exit_code == 130
    assert torch.equal(recon.object.detach(), good_object)
    calibration = assert_complete_partial_result(tmp_path / "ctrl-c", "interrupted", iterations=2)
    assert calibration["stop_detail"] == "interrupted by Ctrl-C"


@pytest.mark.parametrize("sig, code, how", [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "Ctrl-C")])
@pytest.mark.slow  # end to end: a CLI run in a subprocess: the slow lane
def test_a_signal_to_the_cli_leaves_a_complete_partial_result(tiny, tmp_path, sig, code, how):
    dataset_path = tmp_path / "tiny.tif"
    write_simulation(tiny, dataset_path)
    out = tmp_path / "result"
    # PYTHONFAULTHANDLER: a child that does not end after the signal is made to print every thread's stack
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT), PYTHONFAULTHANDLER="1")
    child = subprocess.Popen(
        [sys.executable, "-m", "uafp_gui", "reconstruct", str(dataset_path), "--iterations", "5000",
         "--upsample", "2", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp_path,
        # A suite started in the background by a shell (`... &`) inherits SIGINT ignored, and so would the child:
        # Python then installs no Ctrl-C handler and the signal is lost. The child gets what a terminal gives.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: child.stderr.read1(4096), b"")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and child.poll() is None:
            counts = [int(n) for n in re.findall(rb"(\d+)/5000", b"".join(chunks))]
            if counts and max(counts) >= 2:
                break
            time.sleep(0.05)
        assert child.poll() is None, b"".join(chunks).decode(errors="replace")
        child.send_signal(sig)
        try:
            child.wait(120)
        except subprocess.TimeoutExpired:
            child.send_signal(signal.SIGABRT)  # faulthandler prints where it hangs
            child.wait(30)
            reader.join(10)
            pytest.fail(f"no exit within 120 s of {how}; its stacks:\n" + b"".join(chunks).decode(errors="replace"))
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
    reader.join(10)
    stderr = b"".join(chunks).decode(errors="replace")
    assert child.returncode == code, stderr
    assert "Traceback" not in stderr
    assert f"uafp reconstruct: {how}: stopped; the last good state" in stderr
    calibration = assert_complete_partial_result(out, "interrupted")
    assert 2 <= calibration["iterations"] < 5000
    assert calibration["stop_detail"] == f"interrupted by {how}"
    assert (out / "report.png").is_file()
