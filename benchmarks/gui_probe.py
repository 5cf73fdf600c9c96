"""Measuring a running `MainWindow` from outside, for tests and benchmarks (none of it is in the
app): how many reconstruction updates it drew, how long each frame took from its arrival to the
first drawn update that used it (frame -> display lag), and how long the UI event loop stalls
(`EventLoopMonitor`).

    probe = DrawProbe(window)   # before the reconstruction starts
    ...
    probe.updates_drawn, probe.frame_lag_s()
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from PySide6.QtCore import QObject, QTimer, Slot


class DrawProbe:
    """Wraps `window.recon_panel.show_update` (what the window calls for every update it draws)."""

    def __init__(self, window: Any) -> None:
        self.window = window
        self.updates_drawn = 0
        self.frame_lags_s: list[float] = []
        self._job: Any = None
        self._counted = 0
        draw = window.recon_panel.show_update

        def show_update(update: Any, *args: Any, **kwargs: Any) -> Any:
            shown = draw(update, *args, **kwargs)
            self._drawn(update)
            return shown

        window.recon_panel.show_update = show_update

    def _drawn(self, update: Any) -> None:
        self.updates_drawn += 1
        job = self.window.recon_job
        if job is not self._job:  # a new reconstruction: its own lags
            self._job, self.frame_lags_s, self._counted = job, [], 0
        if job is None:
            return
        now = time.perf_counter()
        arrivals = job.arrivals
        for index in range(self._counted, update.frames_used):
            if index in arrivals:
                self.frame_lags_s.append(now - arrivals[index])
        self._counted = max(self._counted, update.frames_used)

    def frame_lag_s(self) -> np.ndarray:
        """Seconds from each frame's arrival to the first drawn update that used it."""
        return np.asarray(self.frame_lags_s, dtype=float)


class EventLoopMonitor(QObject):
    """Measures UI event-loop stalls: a timer asks to fire every `interval_ms`; the excess of
    each real gap over the interval is how long the loop was busy with something else."""

    def __init__(self, interval_ms: int = 5, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.interval_ms = interval_ms
        self._timer = QTimer(self)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self._tick)
        self._last: float | None = None
        self.gaps_ms: list[float] = []

    def start(self) -> None:
        self.gaps_ms.clear()
        self._last = time.perf_counter()
        self._timer.start()

    def stop(self) -> None:
        self._timer.stop()

    @Slot()
    def _tick(self) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self.gaps_ms.append((now - self._last) * 1000.0)
        self._last = now

    def stall_ms(self) -> tuple[float, float]:
        """(max, p99) of the gaps beyond the timer interval, in ms."""
        if not self.gaps_ms:
            return 0.0, 0.0
        stalls = np.maximum(np.asarray(self.gaps_ms) - self.interval_ms, 0.0)
        return float(stalls.max()), float(np.percentile(stalls, 99))
