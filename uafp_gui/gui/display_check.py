"""Can Qt open a window here? Checked before Qt loads, so a missing display or missing system
libraries give one line that says what to do instead of Qt's abort ("Could not load the Qt
platform plugin xcb", exit 134).

Linux only (Windows and macOS ship what Qt needs). The platform Qt will try is
`QT_QPA_PLATFORM` (a `;`-separated fallback list) or, unset, wayland on a Wayland session and
xcb (X11) otherwise. xcb needs `DISPLAY` pointing at a reachable X server and the xcb libraries
its plugin links against; which of those are missing is read from `ldd` of the plugin itself.
No Qt import here: this module only looks at files, the environment and sockets.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

__all__ = ["DEBIAN_PACKAGES", "README_PACKAGES", "display_problem", "missing_libraries"]

# Library (soname) -> the Debian/Ubuntu package that provides it (checked with apt-cache on Debian 12).
DEBIAN_PACKAGES = {
    "libxcb-cursor.so.0": "libxcb-cursor0",
    "libxcb-icccm.so.4": "libxcb-icccm4",
    "libxcb-image.so.0": "libxcb-image0",
    "libxcb-keysyms.so.1": "libxcb-keysyms1",
    "libxcb-randr.so.0": "libxcb-randr0",
    "libxcb-render-util.so.0": "libxcb-render-util0",
    "libxcb-shape.so.0": "libxcb-shape0",
    "libxcb-xinerama.so.0": "libxcb-xinerama0",
    "libxcb-xkb.so.1": "libxcb-xkb1",
    "libxkbcommon-x11.so.0": "libxkbcommon-x11-0",
    "libxkbcommon.so.0": "libxkbcommon0",
    "libxcb.so.1": "libxcb1",
    "libX11-xcb.so.1": "libx11-xcb1",
    "libX11.so.6": "libx11-6",
    "libxcb-util.so.1": "libxcb-util1",
    "libxcb-shm.so.0": "libxcb-shm0",
    "libxcb-sync.so.1": "libxcb-sync1",
    "libxcb-xfixes.so.0": "libxcb-xfixes0",
    "libxcb-render.so.0": "libxcb-render0",
    "libxcb-glx.so.0": "libxcb-glx0",
    "libxcb-xinput.so.0": "libxcb-xinput0",
    "libEGL.so.1": "libegl1",
    "libGL.so.1": "libgl1",
    "libOpenGL.so.0": "libopengl0",
    "libfontconfig.so.1": "libfontconfig1",
    "libfreetype.so.6": "libfreetype6",
    "libdbus-1.so.3": "libdbus-1-3",
    "libglib-2.0.so.0": "libglib2.0-0",
    "libSM.so.6": "libsm6",
    "libICE.so.6": "libice6",
    "libwayland-client.so.0": "libwayland-client0",
    "libwayland-cursor.so.0": "libwayland-cursor0",
    "libwayland-egl.so.1": "libwayland-egl1",
}

# What the README tells Debian/Ubuntu users to install for the xcb plugin (Qt's own list, plus OpenGL,
# fontconfig and D-Bus, which the plugin links against too); the other packages above come with these.
README_PACKAGES = (
    "libegl1", "libgl1", "libfontconfig1", "libdbus-1-3", "libxkbcommon0", "libxkbcommon-x11-0", "libxcb-cursor0",
    "libxcb-icccm4", "libxcb-image0", "libxcb-keysyms1", "libxcb-randr0", "libxcb-render-util0", "libxcb-shape0",
    "libxcb-xinerama0", "libxcb-xkb1",
)

PLUGIN_FILES = {"xcb": "libqxcb.so", "wayland": "libqwayland.so"}
NO_SCREEN_NEEDED = {"offscreen", "minimal", "vnc", "eglfs", "linuxfb", "vkkhrdisplay", "minimalegl"}
HOW_TO_RUN_WITHOUT = "or set QT_QPA_PLATFORM=offscreen to run with no screen"


def _qt_plugin(name: str) -> Path | None:
    spec = importlib.util.find_spec("PySide6")  # finds the package without importing Qt
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        plugin = Path(folder) / "Qt" / "plugins" / "platforms" / PLUGIN_FILES[name]
        if plugin.is_file():
            return plugin
    return None


def missing_libraries(library: Path) -> list[str]:
    """Sonames `library` needs that the dynamic loader cannot find (from `ldd`; [] when ldd is absent)."""
    ldd = shutil.which("ldd")
    if ldd is None:
        return []
    try:
        text = subprocess.run([ldd, str(library)], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    missing = [line.split("=>")[0].strip() for line in text.splitlines() if "not found" in line]
    return list(dict.fromkeys(missing))


def _x_server_reachable(display: str) -> bool:
    """Whether a local X display (":N") has a listening socket; remote or TCP displays count as reachable."""
    host, _, rest = display.rpartition(":")
    if host not in ("", "unix"):
        return True  # ssh -X (localhost:10.0) and remote servers: Qt will tell
    number = rest.split(".")[0]
    if not number.isdigit():
        return True
    path = f"/tmp/.X11-unix/X{number}"
    for address in ("\0" + path, path):  # Linux's abstract socket first, then the file
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(1.0)
            try:
                connection.connect(address)
                return True
            except OSError:
                continue
    return False


def _platforms(environ: Mapping[str, str]) -> list[str]:
    wanted = environ.get("QT_QPA_PLATFORM", "").strip()
    if wanted:
        return [p.split(":")[0].strip().lower() for p in wanted.split(";") if p.strip()]
    if environ.get("WAYLAND_DISPLAY") and environ.get("XDG_SESSION_TYPE", "").lower() == "wayland":
        return ["wayland", "xcb"]
    return ["xcb"]


def _platform_problem(
    name: str, environ: Mapping[str, str], missing: Callable[[Path], list[str]], reachable: Callable[[str], bool]
) -> str | None:
    """Why Qt's platform `name` cannot open a window here (None: it can, or we cannot tell)."""
    if name in NO_SCREEN_NEEDED or name not in PLUGIN_FILES:
        return None
    if name == "xcb":
        display = environ.get("DISPLAY", "")
        if not display:
            return (
                "no display: DISPLAY is not set (no desktop session here). Start uafp-gui on the desktop, "
                f"over `ssh -X`, or under `xvfb-run uafp-gui`, {HOW_TO_RUN_WITHOUT}"
            )
        if not reachable(display):
            return (
                f"no X server answers on DISPLAY={display}: start the desktop session (or Xvfb) first, "
                f"{HOW_TO_RUN_WITHOUT}"
            )
    elif not environ.get("WAYLAND_DISPLAY"):
        return (
            f"QT_QPA_PLATFORM=wayland but WAYLAND_DISPLAY is not set: log in to a Wayland session, {HOW_TO_RUN_WITHOUT}"
        )
    plugin = _qt_plugin(name)
    if plugin is None:
        return None
    libraries = missing(plugin)
    if not libraries:
        return None
    packages = list(dict.fromkeys(DEBIAN_PACKAGES.get(lib, lib) for lib in libraries))
    return (
        f"Qt's {name} platform plugin cannot load: missing system libraries {', '.join(libraries)}. "
        f"On Debian/Ubuntu: sudo apt-get install {' '.join(packages)} (the README lists every system "
        f"package per OS); {HOW_TO_RUN_WITHOUT}"
    )


def display_problem(
    environ: Mapping[str, str] | None = None,
    platform: str | None = None,
    missing: Callable[[Path], list[str]] = missing_libraries,
    reachable: Callable[[str], bool] = _x_server_reachable,
) -> str | None:
    """One line saying why no window can open here and what to do, or None when one can."""
    environ = os.environ if environ is None else environ
    if not (platform or sys.platform).startswith("linux"):
        return None
    problems = []
    for name in _platforms(environ):
        problem = _platform_problem(name, environ, missing, reachable)
        if problem is None:
            return None
        problems.append(problem)
    return problems[0] if problems else None
