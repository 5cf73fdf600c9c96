"""An acquisition session: an `Acquisition` and, when asked, the live reconstruction it feeds.

`events()` runs the acquisition and tells the live reconstruction when the run starts (its
metadata, frames already on disk) and when it ends, however it ends; front ends iterate it and
draw or print each event (the GUI on a worker thread, the CLI in its main loop).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from uafp_gui.acquisition.events import ProgressEvent
    from uafp_gui.acquisition.runner import Acquisition
    from uafp_gui.session.reconstruction import LiveReconstruction

__all__ = ["AcquisitionSession"]


class AcquisitionSession:
    """`acquisition`, with `live` (a `LiveReconstruction`) fed by its frames when given."""

    def __init__(self, acquisition: Acquisition, live: LiveReconstruction | None = None) -> None:
        self.acquisition = acquisition
        self.live = live
        if live is not None:
            live.attach(acquisition)

    def events(self) -> Iterator[ProgressEvent]:
        """`acquisition.run()`'s events; the live reconstruction learns of the start and the end."""
        from uafp_gui.acquisition.events import AcquisitionStarted

        try:
            for event in self.acquisition.run():
                if self.live is not None and isinstance(event, AcquisitionStarted):
                    self.live.started(event)
                yield event
        finally:
            if self.live is not None:
                self.live.ended()

    def cancel(self) -> None:
        """Stop at the next frame (any thread); the frames written are kept."""
        self.acquisition.cancel()
