"""First run on a fresh machine: the app says what is missing before Qt aborts, the CLI checks its
arguments before torch loads, and (where Xvfb is installed) the app really starts on an X server
and draws its window."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from uafp_gui.gui.display_check import DEBIAN_PACKAGES, README_PACKAGES, display_problem

ROOT = Path(__file__).resolve().parents[1]
LINUX = "linux"


def no_libs_missing(_plugin: Path) -> list[str]:
    return []


def test_no_display_says_what_to_do():
    problem = display_problem({}, LINUX, no_libs_missing)
    assert "DISPLAY is not set" in problem and "QT_QPA_PLATFORM=offscreen" in problem and "xvfb-run" in problem


def test_unreachable_x_server_is_named():
    problem = display_problem({"DISPLAY": ":97"}, LINUX, no_libs_missing, reachable=lambda _: False)
    assert "DISPLAY=:97" in problem


def test_missing_xcb_libraries_name_the_debian_packages():
    missing = ["libxcb-cursor.so.0", "libxcb-icccm.so.4", "libxkbcommon-x11.so.0"]
    problem = display_problem({"DISPLAY": ":0"}, LINUX, lambda _: missing, reachable=lambda _: True)
    assert problem is not None
    assert "sudo apt-get install libxcb-cursor0 libxcb-icccm4 libxkbcommon-x11-0" in problem
    assert "\n" not in problem


def test_offscreen_and_other_systems_need_nothing():
    assert display_problem({"QT_QPA_PLATFORM": "offscreen"}, LINUX, lambda _: ["libxcb.so.1"]) is None
    assert display_problem({}, "win32", lambda _: ["x"]) is None
    assert display_problem({}, "darwin", lambda _: ["x"]) is None
    # a fallback list works when any of its platforms does
    assert display_problem({"QT_QPA_PLATFORM": "xcb;offscreen"}, LINUX, no_libs_missing) is None


def test_the_readme_lists_the_qt_packages_and_ci_installs_the_readme_lines():
    """What a user is told to install is what the README lists, and .ci/run installs those lines."""
    readme = (ROOT / "README.md").read_text()
    lines = [line.strip() for line in readme.splitlines() if line.strip().startswith("sudo apt-get install ")]
    listed = {word for line in lines for word in line.split()}
    assert set(README_PACKAGES) <= listed, set(README_PACKAGES) - listed
    assert {"xvfb", "xauth"} <= listed
    assert all(DEBIAN_PACKAGES[lib] for lib in ("libxcb-cursor.so.0", "libxkbcommon-x11.so.0"))
    assert "grep -E '^ *sudo apt-get install ' README.md" in (ROOT / ".ci" / "run").read_text()


def test_uafp_gui_without_display_exits_with_one_line():
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-m", "uafp_gui", "gui", "--no-probe"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "DISPLAY is not set" in lines[0], out.stderr


@pytest.mark.slow  # four CLI subprocesses: the slow lane
def test_cli_path_errors_come_before_torch_loads(tmp_path):
    """An argument or path error never waits for torch (the figures: benchmarks/bench_startup.py)."""
    code = (
        "import sys; from uafp_gui.cli import main; rc = main(sys.argv[1:]); "
        "print('torch' in sys.modules, file=sys.stderr); sys.exit(rc)"
    )
    for args in (["reconstruct", str(tmp_path / "missing.tif")],
                 ["reconstruct", str(tmp_path / "missing.tif"), "--upsample", "0"],
                 ["simulate", str(tmp_path / "nowhere" / "x.tif")],
                 ["acquire", "--out", str(tmp_path / "nowhere" / "x.tif")]):
        out = subprocess.run([sys.executable, "-c", code, *args], env=dict(os.environ, PYTHONPATH=str(ROOT)),
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 2, (args, out.stderr)
        assert out.stderr.strip().splitlines()[-1] == "False", (args, out.stderr)


def test_gui_window_needs_no_torch_before_it_shows(qtbot, tmp_path):
    """The window is built without torch: it loads on a worker thread after the first paint."""
    code = (
        "import sys; from PySide6.QtWidgets import QApplication; app = QApplication([]); "
        "from PySide6.QtCore import QSettings; from uafp_gui.gui.main_window import MainWindow; "
        f"w = MainWindow(QSettings({str(tmp_path / 'x.ini')!r}, QSettings.Format.IniFormat), probe_hardware=False, "
        "connect_on_start=False); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=str(ROOT), QT_QPA_PLATFORM="offscreen"))
    assert out.stdout.strip().splitlines()[-1] == "False", out.stderr


@pytest.mark.skipif(shutil.which("xvfb-run") is None, reason="Xvfb not installed (.ci/run installs it)")
@pytest.mark.slow  # end to end: the app on an X server: the slow lane
def test_app_starts_under_xvfb_and_draws_its_window(tmp_path):
    """The README's command 1 on an X server: the window appears and is not blank (a screenshot)."""
    shot = tmp_path / "first_window.png"
    env = {k: v for k, v in os.environ.items() if k not in ("QT_QPA_PLATFORM", "DISPLAY")}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run(
        ["xvfb-run", "-a", "-s", "-screen 0 1600x1000x24", sys.executable,
         str(ROOT / "benchmarks" / "gui_first_window.py"), str(shot), "--settings", str(tmp_path / "gui.ini")],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    import numpy as np
    from PIL import Image

    image = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert image.shape[0] > 500 and image.shape[1] > 800
    assert image.std() > 10  # widgets drawn, not a blank or black screen


@pytest.mark.skipif(not sys.platform.startswith(LINUX), reason="POSIX signals")
@pytest.mark.slow  # end to end: the app in a subprocess: the slow lane
def test_ctrl_c_closes_the_app_without_a_traceback(tmp_path):
    """Ctrl-C (SIGINT) in the terminal that started `uafp-gui` closes the window as its close button
    does and exits 0, instead of a KeyboardInterrupt traceback (or no reaction) inside Qt's loop."""
    import signal

    code = (
        "import contextlib, sys; from uafp_gui.gui import app\n"
        "install = app.closing_on_signals\n"
        "@contextlib.contextmanager\n"
        "def announced(window):\n"
        "    with install(window):\n"
        "        print('ready', flush=True); yield\n"
        "app.closing_on_signals = announced\n"
        f"sys.exit(app.main(['--no-probe', '--settings', {str(tmp_path / 'gui.ini')!r}]))\n"
    )
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=dict(os.environ, PYTHONPATH=str(ROOT), QT_QPA_PLATFORM="offscreen"))
    try:
        assert process.stdout.readline().strip() == "ready", process.stderr.read()
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
