"""Writing raw FP datasets frame by frame, crash-safe: `DatasetWriter`, `write_dataset`.

The complete metadata JSON (every planned frame) goes into page 0's ImageDescription when the
first frame is written (see `uafp_gui.io.dataset` for the file layout). Frames are appended one at
a time by `uafp_gui.io.tiff.TiffStackWriter`: each page's pixels and directory are on disk before
the page is linked into the file, so a run killed at any moment (even `kill -9`) leaves a valid
TIFF holding the first k complete frames, which `DatasetWriter(..., resume=True)` continues in
place. Pixels are stored as the one pixel-type policy says (`uafp_gui.io.pixels`).
"""

from __future__ import annotations

import os
import struct
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from uafp_gui.errors import DatasetError
from uafp_gui.io._files import new_file_mode
from uafp_gui.io.pixels import FLOAT32, UINT16, stored_dtype, stored_pixels
from uafp_gui.io.schema import SOFTWARE_NAME, DatasetMeta, meta_from_text
from uafp_gui.io.tiff import (
    CLASSIC_TIFF_LIMIT_BYTES,
    Page,
    TiffStackWriter,
    check_frame_size,
    first_description,
    open_tiff,
    quiet_tifffile,
    walk_pages,
)


class DatasetWriter:
    """Write a dataset frame by frame; the file is a readable dataset after every `append`.

    The complete metadata (all planned frames) goes into page 0's ImageDescription when the
    first frame is appended. Use as a context manager::

        with DatasetWriter("run.tif", meta) as writer:
            for image in camera_frames():
                writer.append(image)

    `resume=True` continues an existing partial file (the metadata stored in it wins; a `meta`
    given as well must describe the same frames); `frames_present` says how many are there.
    Without `resume`, an existing file is an error unless `overwrite=True`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        meta: DatasetMeta | None = None,
        *,
        resume: bool = False,
        overwrite: bool = False,
    ) -> None:
        self.path = Path(path)
        self._fh: Any = None
        self._writer: TiffStackWriter | None = None
        self._frame_shape: tuple[int, int] | None = None
        self._dtype: np.dtype | None = None
        existing: list[Page] = []
        if resume and self.path.exists():
            existing, stored = self._read_existing(meta)
            if meta is not None and meta.frames != stored.frames:
                raise DatasetError(
                    f"cannot resume {self.path}: its metadata plans different frames than the "
                    "metadata given; resume with meta=None or write a new file"
                )
            if meta is not None and meta.to_dict() != stored.to_dict():
                warnings.warn(
                    f"resuming {self.path}: keeping the metadata stored in the file",
                    UserWarning,
                    stacklevel=2,
                )
            meta = stored
        elif self.path.exists() and not overwrite:
            raise DatasetError(
                f"{self.path} already exists: choose another name, pass overwrite=True, or "
                "resume=True to continue an interrupted acquisition"
            )
        if meta is None:
            raise DatasetError(f"no metadata for {self.path}: pass meta= (or resume=True on an existing file)")
        self.meta = meta
        self.frames_present = 0
        if existing:
            self._continue_in_place(existing)
        elif resume and self.path.exists():
            self.path.unlink()

    # Resume appends in place: the pages on disk stay where they are (no copy, no second file,
    # the file keeps its mode); only bytes after the last complete page (a half-written page)
    # are cut off, and the next page is linked after the last complete one.
    def _read_existing(self, meta: DatasetMeta | None) -> tuple[list[Page], DatasetMeta]:
        try:
            description = first_description(self.path)
        except DatasetError as error:
            if "holds no complete frame" not in str(error):
                raise
            description = None
        if description is None:
            if meta is None:  # killed before frame 0 was complete: nothing to recover
                raise DatasetError(
                    f"cannot resume {self.path}: it holds no complete frame and so no "
                    "metadata; pass meta= to start it again"
                )
            return [], meta
        stored = meta_from_text(description, f"embedded metadata of {self.path}")
        with quiet_tifffile(), open_tiff(self.path) as tif:
            if tif.tiff.byteorder != "<":
                raise DatasetError(f"cannot resume {self.path}: it was not written by uafp (big-endian TIFF)")
            bigtiff = bool(tif.is_bigtiff)
            pages, _, more = walk_pages(tif, self.path, self.path.stat().st_size, len(stored.frames))
        if more:
            raise DatasetError(
                f"cannot resume {self.path}: it holds more than the {len(stored.frames)} frames it plans"
            )
        for page in pages:
            check_frame_size(page.shape, page.dtype, self.path, page.index, 1)
            if page.shape != pages[0].shape or page.dtype != pages[0].dtype or len(page.shape) != 2:
                raise DatasetError(
                    f"cannot resume {self.path}: frame {page.index} has shape {page.shape} {page.dtype}, "
                    f"frame 0 {pages[0].shape} {pages[0].dtype}; write a new file"
                )
            page.tiff_page = None  # the file is closed; only positions are kept
        self._bigtiff = bigtiff
        return pages, stored

    def _continue_in_place(self, pages: list[Page]) -> None:
        last = pages[-1]
        try:
            self._fh = open(self.path, "r+b")  # closed in close()
        except OSError as error:
            raise DatasetError(f"cannot resume {self.path}: {error.strerror or error}") from None
        try:
            self._fh.truncate(max(page.end for page in pages))  # a half-written page, if any
            self._fh.seek(last.link_position)  # the chain ends at the last complete page
            self._fh.write(struct.pack("<Q" if self._bigtiff else "<I", 0))
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except OSError as error:
            self._fh.close()
            self._fh = None
            raise DatasetError(f"cannot resume {self.path}: {error.strerror or error}") from None
        self._writer = TiffStackWriter.resume(self._fh, self._bigtiff, last.link_position, len(pages))
        self._frame_shape = (int(last.shape[0]), int(last.shape[1]))
        self._dtype = stored_dtype(last.dtype)
        self.frames_present = len(pages)

    @property
    def frames_planned(self) -> int:
        return len(self.meta.frames)

    @property
    def complete(self) -> bool:
        return self.frames_present == self.frames_planned

    def append(self, frame: np.ndarray) -> int:
        """Write the next frame (flushed to the OS before returning); returns its index."""
        if self.frames_present >= self.frames_planned:
            raise DatasetError(f"{self.path}: all {self.frames_planned} planned frames are already written")
        data = np.asarray(frame)
        if data.ndim != 2:
            raise DatasetError(f"a frame must be a 2-D (H, W) array, got shape {data.shape}")
        data = stored_pixels(data, f"frame {self.frames_present}")
        if self._writer is None:
            self._frame_shape = data.shape
            self._dtype = data.dtype
            planned_bytes = data.nbytes * self.frames_planned
            try:
                self._fh = open(self.path, "wb")  # closed in close()
            except OSError as error:
                raise DatasetError(
                    f"cannot write {self.path}: {error.strerror or error}; choose another output file"
                ) from None
            self._writer = TiffStackWriter(self._fh, bigtiff=planned_bytes > CLASSIC_TIFF_LIMIT_BYTES)
            self._writer.write_page(
                data,
                description=_embeddable_json(self.meta),
                software=self.meta.software or SOFTWARE_NAME,
                resolution_px_per_cm=1e4 / self.meta.sample_pixel_um,
            )
        else:
            if data.shape != self._frame_shape:
                raise DatasetError(
                    f"frame {self.frames_present} has shape {data.shape}, but frame 0 has "
                    f"{self._frame_shape}: all frames must be the same size"
                )
            if data.dtype != self._dtype:
                if self._dtype == UINT16 and data.dtype == FLOAT32:
                    raise DatasetError(
                        f"frame {self.frames_present} is float but the dataset stores uint16: "
                        "keep one pixel type for every frame"
                    )
                data = data.astype(self._dtype)
            self._writer.write_page(data, resolution_px_per_cm=1e4 / self.meta.sample_pixel_um)
        self.frames_present += 1
        return self.frames_present - 1

    def close(self) -> None:
        if self._fh is not None and not self._fh.closed:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def write_dataset(
    path: str | os.PathLike[str],
    meta: DatasetMeta,
    frames: np.ndarray | Sequence[np.ndarray],
    *,
    overwrite: bool = True,
) -> Path:
    """Write a complete dataset in one go; `frames` must hold one (H, W) image per entry.

    Like `numpy.save` it replaces an existing file unless `overwrite=False` (`DatasetWriter`,
    meant for long acquisitions, refuses by default).
    """
    count = len(frames)
    if count != len(meta.frames):
        raise DatasetError(
            f"{count} frames given but the metadata lists {len(meta.frames)}: give one frame per entry of meta.frames"
        )
    path = Path(path)
    if path.exists() and not overwrite:
        raise DatasetError(f"{path} already exists: choose another name or pass overwrite=True")
    if path.is_dir():
        raise DatasetError(f"{path} is a folder: give a .tif file name")
    # Written to a temporary file beside the target and renamed into place: a failure (bad data,
    # full disk) leaves no unreadable file behind, and an existing file is replaced only when the
    # new one is complete.
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".partial.tif", dir=path.parent or ".")
    except OSError as error:
        raise DatasetError(f"cannot write {path}: {error.strerror or error}; choose another output file") from None
    os.close(handle)
    try:
        with DatasetWriter(temporary, meta, overwrite=True) as writer:
            for frame in frames:
                writer.append(frame)
        os.chmod(temporary, new_file_mode())
        os.replace(temporary, path)
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        raise DatasetError(f"cannot write {path}: {error.strerror or error}; nothing was written") from None
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def _embeddable_json(meta: DatasetMeta) -> str:
    # tifffile treats a description containing '"shape":' as its own shaped-array metadata;
    # a space before the colon keeps the JSON identical in meaning but not mistaken for that.
    return meta.to_json().replace('"shape":', '"shape" :')
