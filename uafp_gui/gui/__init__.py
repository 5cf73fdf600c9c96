"""The desktop app (PySide6 + pyqtgraph): the only package that imports Qt.

Layout: `app.main()` builds a `MainWindow` (`main_window`), whose docks are the panels
(`devices_panel`, `led_map`, `live_view`, `acquisition_panel`, `recon_panel`, `export_panel`).
Long work is a plain-Python generator (`jobs`, no Qt) run on a `GeneratorWorker` thread
(`workers`); views pull the newest item a few times a second and never wait on a worker.
"""

import os

# The core is driven from worker threads and the GUI never listens to its signals, so
# pymmcore-plus keeps its plain (psygnal) events rather than Qt ones (which need qtpy).
os.environ.setdefault("PYMM_SIGNALS_BACKEND", "psygnal")
