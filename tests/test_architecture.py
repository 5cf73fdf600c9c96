"""Layering and lint, enforced by the test suite: import-linter contracts and ruff.

The contracts live in pyproject.toml ([tool.importlinter]); this file runs them exactly as the
`lint-imports` command does, from the repository root, in the interpreter running the tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO_ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = REPO_ROOT / "pyproject.toml"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def test_pyproject_declares_the_layering_contracts():
    config = tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]
    assert config["root_package"] == "uafp_gui"
    contracts = {c["name"]: c for c in config["contracts"]}
    qt = next(c for c in contracts.values() if "PySide6" in c.get("forbidden_modules", []))
    assert qt["type"] == "forbidden"
    for layer in ("uafp_gui.physics", "uafp_gui.recon", "uafp_gui.io", "uafp_gui.cli", "uafp_gui.devices"):
        assert layer in qt["source_modules"], layer
    pure = [c for c in contracts.values() if "uafp_gui.devices" in c.get("forbidden_modules", [])]
    assert pure and {"uafp_gui.physics", "uafp_gui.recon"} <= set(pure[0]["source_modules"])
    layers = [c for c in contracts.values() if c["type"] == "layers"]
    assert len(layers) == 1
    floors = [layer.replace("(", "").replace(")", "") for layer in layers[0]["layers"]]
    order = ["uafp_gui.gui", "uafp_gui.session", "uafp_gui.acquisition", "uafp_gui.devices", "uafp_gui.recon",
             "uafp_gui.physics", "uafp_gui.io", "uafp_gui.errors"]
    where = [next(i for i, floor in enumerate(floors) if name in floor.split(" | ")) for name in order]
    assert where == sorted(where) and len(set(where)) == len(where), floors


def test_import_linter_contracts_are_kept():
    pytest.importorskip("importlinter")
    completed = subprocess.run(
        [
            sys.executable,
            "-c",
            "from importlinter.cli import lint_imports; "
            "raise SystemExit(lint_imports(config_filename='pyproject.toml', no_cache=True))",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = completed.stdout + completed.stderr
    assert completed.returncode == 0, report
    assert "0 broken" in report and "BROKEN" not in report


@pytest.mark.slow  # a subprocess importing every headless layer: the slow lane
def test_headless_layers_load_no_qt_at_run_time():
    """What the contract checks statically, checked by importing the headless entry points."""
    code = (
        "import sys\n"
        "import uafp_gui.cli, uafp_gui.recon.classic, uafp_gui.simulate, uafp_gui.metrics\n"
        "import uafp_gui.recon.report, uafp_gui.io.dataset, uafp_gui.io.result\n"
        "uafp_gui.cli.build_parser()\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('PySide6', 'pyqtgraph', 'superqt', 'qtpy', 'PyQt5', 'PyQt6'))\n"
        "assert not loaded, loaded\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr


def _ruff() -> list[str]:
    """ruff of the test interpreter's environment, else the one on PATH."""
    try:
        import ruff  # noqa: F401

        return [sys.executable, "-m", "ruff"]
    except ImportError:
        pass
    if shutil.which("ruff"):
        return ["ruff"]
    message = "ruff is not installed (pip install -e '.[test]')"
    if IN_CI:
        pytest.fail(message + ": CI must run the linter")
    pytest.skip(message)


def test_ruff_check_passes():
    completed = subprocess.run(
        [*_ruff(), "check", "--no-cache", "uafp_gui", "tests"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_production_code_never_imports_the_simulated_hardware():
    """devices, acquisition and the layers below know no simulator: only the session/CLI choice,
    tests and benchmarks import uafp_gui.simulated (the contract is run by the test above)."""
    config = tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]
    simulated = [c for c in config["contracts"] if "uafp_gui.simulated" in c.get("forbidden_modules", [])]
    assert simulated and simulated[0]["type"] == "forbidden"
    assert {"uafp_gui.devices", "uafp_gui.acquisition", "uafp_gui.io", "uafp_gui.physics", "uafp_gui.recon"} <= set(
        simulated[0]["source_modules"]
    )


# The count of `Any` in the package before the redesign of issue 13 (b47db86; import lines not counted).
# New code is typed: the count may only fall (lower this bound when it does).
ANY_BEFORE_ISSUE_13 = 195


def test_no_new_any():
    import re

    count = 0
    for path in (REPO_ROOT / "uafp_gui").rglob("*.py"):
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.lstrip().startswith(("from ", "import ")):
                count += len(re.findall(r"\bAny\b", line))
    assert count <= ANY_BEFORE_ISSUE_13, f"{count} uses of Any (at most {ANY_BEFORE_ISSUE_13}): type the new code"


@pytest.mark.slow  # mypy over the package takes 30-90 s here
def test_mypy_passes_at_the_configured_level():
    """mypy with pyproject.toml's [tool.mypy] (the level and the modules not yet passing are stated there)."""
    pytest.importorskip("mypy")
    completed = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", "--cache-dir", os.devnull],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert completed.returncode == 0, completed.stdout[-5000:] + completed.stderr[-2000:]
