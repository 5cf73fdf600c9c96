"""Error dialogs: one helper, non-blocking, that tests can find and close.

Typed errors already say what to do, so the dialog shows the message as is. The box is
opened with `open()` (window-modal, returns at once) and remembered in `shown_errors`.
"""

from __future__ import annotations

import logging

from PySide6.QtWidgets import QMessageBox, QWidget

__all__ = ["shown_errors", "show_error"]

logger = logging.getLogger(__name__)
shown_errors: list[QMessageBox] = []  # every error box opened in this process, newest last


def show_error(parent: QWidget | None, title: str, error: BaseException | str) -> QMessageBox:
    """Show `error` in a non-blocking message box titled `title`; returns the box."""
    text = str(error) if isinstance(error, str) else (str(error) or type(error).__name__)
    if isinstance(error, BaseException):
        from uafp_gui.errors import UafpError

        if not isinstance(error, UafpError):  # a bug, not a user error: keep the trace in the log
            logger.error("%s", title, exc_info=error)
            text = f"{type(error).__name__}: {text}"
        elif error.resumable:  # the app's own words for what the CLI calls --resume
            text += (f".\n\nThe {error.frames_saved} frames acquired are kept in {error.path}: open it "
                     "(File > Open) to reconstruct them, or start a new acquisition.")
    box = QMessageBox(QMessageBox.Icon.Critical, title, text, QMessageBox.StandardButton.Ok, parent)
    box.setObjectName("uafpErrorDialog")
    shown_errors.append(box)
    box.finished.connect(lambda _=0, b=box: shown_errors.remove(b) if b in shown_errors else None)
    box.open()
    return box
