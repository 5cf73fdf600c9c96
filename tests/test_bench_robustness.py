"""benchmarks/bench_robustness.py: the distribution it draws from, and its --quick run end to end."""

from __future__ import annotations

import json
import math

import bench_robustness
import numpy as np
import pytest
import refsim

pytestmark = pytest.mark.usefixtures("single_thread")


def test_draws_follow_the_documented_distribution():
    micros = [bench_robustness.draw_microscope(seed) for seed in range(60)]
    assert bench_robustness.draw_microscope(3) == micros[3]  # seeded
    for micro in micros:
        assert 0.45 <= micro.wavelength_um <= 0.65
        assert (micro.magnification, micro.objective_na) in bench_robustness.OBJECTIVES
        assert 1.85 <= micro.camera_pixel_um <= 6.5
        # The camera samples the coherent pupil.
        assert micro.sample_pixel_um <= micro.wavelength_um / (2 * micro.objective_na) + 1e-9
        step = micro.led_pitch_mm / math.hypot(micro.led_pitch_mm, micro.led_height_mm) / micro.wavelength_um
        assert 0.40 <= bench_robustness.pupil_overlap(step, micro.objective_na / micro.wavelength_um) <= 0.88
        assert 2.5 <= micro.led_pitch_mm <= 10 and 40 <= micro.led_height_mm <= 200
        assert abs(micro.height_error_mm) <= 0.1 * micro.led_height_mm
        assert max(abs(micro.shift_x_mm), abs(micro.shift_y_mm)) <= 3 and abs(micro.rotation_deg) <= 5
        assert abs(micro.zernike_rad[4]) <= 2.5 and max(abs(micro.zernike_rad[j]) for j in range(5, 12)) <= 0.6
        assert 300 <= micro.photons_per_pixel <= 20000 and micro.bit_depth in (12, 16)
        assert 64 <= micro.frame_size <= 256
        assert bench_robustness.needed_upsample(micro) <= bench_robustness.MAX_UPSAMPLE
        assert len(refsim.led_list(micro)) >= 9
    # The space is covered, not one corner of it.
    assert len({(m.magnification, m.objective_na) for m in micros}) == 5
    assert any(m.led_disk_na is not None for m in micros) and any(m.order == "spiral" for m in micros)
    assert np.ptp([m.zernike_rad[4] for m in micros]) > 3.5


def test_pupil_overlap():
    assert bench_robustness.pupil_overlap(0.0, 1.0) == pytest.approx(1.0)
    assert bench_robustness.pupil_overlap(2.0, 1.0) == 0.0
    assert bench_robustness.pupil_overlap(1.0, 1.0) == pytest.approx(0.391, abs=1e-3)


@pytest.mark.slow
def test_quick_benchmark_runs_end_to_end(tmp_path, capsys):
    summary = bench_robustness.main(["--quick", "--out", str(tmp_path / "quick")])
    data = json.loads((tmp_path / "quick.json").read_text())
    assert summary["draws"] == 2 and len(data["draws"]) == 2
    assert (tmp_path / "quick.csv").read_text().count("\n") == 3
    for row in data["draws"]:
        assert row["outcome"] in ("ok", "failed", "crash")
        assert {"pass_shift", "pass_zernike", "pass_psnr_vs_true", "no_crash"} <= set(row)
        assert row["outcome"] != "crash", row.get("traceback")
        for key in ("uafp_psnr_db", "frozen_psnr_db", "classic_psnr_db", "err_zernike_rms_rad"):
            assert np.isfinite(row[key]), key
    out = capsys.readouterr().out
    assert "fraction" not in out and "pass_all" in out and "2-sigma coverage" in out


def test_each_draw_is_written_as_soon_as_it_finishes(tmp_path, monkeypatch):
    """A long run stopped half-way (Ctrl-C, a killed job) keeps every draw it finished."""

    def fake_run_draw(micro, draw, iterations=None, classic=True, overrides=None):
        if draw == 1:
            raise KeyboardInterrupt
        return {"draw": draw, "seed": micro.seed, "outcome": "ok", "uafp_s": 1.0, "no_crash": True}

    monkeypatch.setattr(bench_robustness, "run_draw", fake_run_draw)
    with pytest.raises(KeyboardInterrupt):
        bench_robustness.main(["--draws", "3", "--seed", "5", "--max-frame", "64", "--out", str(tmp_path / "run")])
    data = json.loads((tmp_path / "run.json").read_text())
    assert [row["draw"] for row in data["draws"]] == [0]
    assert data["summary"]["draws"] == 1 and data["summary"]["planned_draws"] == 3
    assert data["summary"]["seeds"] == [5] and data["draws"][0]["microscope"]["seed"] == 5
    assert (tmp_path / "run.csv").read_text().count("\n") == 2


def test_engine_settings_can_be_set_for_an_a_b_run(tmp_path, monkeypatch):
    """`--set NAME=VALUE` reaches every draw's engine settings (VALUE read as JSON)."""
    seen = []

    def fake_run_draw(micro, draw, iterations=None, classic=True, overrides=None):
        seen.append(overrides)
        return {"draw": draw, "seed": micro.seed, "outcome": "ok", "uafp_s": 1.0, "no_crash": True}

    monkeypatch.setattr(bench_robustness, "run_draw", fake_run_draw)
    monkeypatch.setattr(bench_robustness, "print_table", lambda rows: None)
    bench_robustness.main(
        ["--draws", "2", "--max-frame", "64", "--set", "start_rim_min_response=0", "--set", "polish_steps=1",
         "--out", str(tmp_path / "run")]
    )
    assert seen == [{"start_rim_min_response": 0, "polish_steps": 1}] * 2
