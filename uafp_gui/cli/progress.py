"""Progress bars with ETA for long CLI jobs (tqdm on stderr; silent when not a terminal and short)."""

from __future__ import annotations

import sys

from tqdm import tqdm


def progress_bar(total: int, description: str, unit: str = "it", initial: int = 0, delay_s: float = 1.0) -> tqdm:
    """A bar with ETA; appears only once the job has run for `delay_s` (a second by default)."""
    return tqdm(total=total, desc=description, unit=unit, file=sys.stderr, delay=delay_s, dynamic_ncols=True,
                initial=initial)


class PhaseProgress:
    """A reconstruction's progress, one bar per phase with its own ETA: the start-geometry fit, the
    start search (`UafpReconstruction.on_phase`), the iterations (`iteration(update)`), and after the
    last one the polish and the error bars (`on_phase` again).

    Each bar starts when its phase does, so an ETA is never computed from the time another phase
    took (a search of minutes before the first iteration must not read as hours for the rest).
    """

    def __init__(self, iterations: int, description: str = "UA-FP") -> None:
        self.iterations = iterations
        self.description = description
        self.bar: tqdm | None = None
        self.phase: str | None = None
        self.first_iteration: int | None = None

    def _switch(self, phase: str, total: int, unit: str, initial: int = 0, delay_s: float = 1.0) -> tqdm:
        if self.phase != phase or self.bar is None:
            self.close()
            self.phase = phase
            self.bar = progress_bar(total, phase, unit, initial, delay_s)
        return self.bar

    def on_phase(self, phase: str, done: int, total: int) -> None:
        """`UafpReconstruction.on_phase` callback (runs on the reconstruction's thread)."""
        unit = "step" if "fitting" in phase else "probe" if "search" in phase else "batch"
        bar = self._switch(phase, total, unit)
        if bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    def iteration(self, update) -> None:
        """Show a `ReconstructionUpdate` (the bar counts this run's iterations: `update.iteration` is cumulative)."""
        if self.first_iteration is None:
            self.first_iteration = update.iteration - 1  # the iterations before this run's first
        done = update.iteration - self.first_iteration
        if self.phase != self.description:  # the first iteration, or the last one's update after its polish
            # back after the polish and error bars: shown at once (the run ends now), not after a second
            delay_s = 0.0 if done > 1 else 1.0
            bar = self._switch(self.description, self.iterations, "iter", initial=done, delay_s=delay_s)
        else:
            bar = self._switch(self.description, self.iterations, "iter")  # the current bar
            bar.update(done - bar.n)
        bar.set_postfix(loss=f"{update.loss:.4g}", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> PhaseProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
