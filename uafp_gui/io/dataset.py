"""Reading raw FP datasets (docs/dataset_format.md section 1): `read_dataset` gives a `Dataset`.

How the JSON is stored: files this project writes carry the complete metadata JSON - every
*planned* frame, not only those already acquired - as the ImageDescription tag of the first
TIFF page; later pages carry no description. The file is otherwise a plain multi-page
grey-level TIFF (no OME-XML, no ImageJ hyperstack header), so Fiji, napari or any TIFF library
open it as an ordinary image stack and the JSON stays readable with any TIFF tag viewer.
A sidecar `<stem>.json` next to the TIFF is also accepted and, when present, wins over the
embedded copy: that is how third-party plain TIFF stacks are described.

A file written by an acquisition that was killed holds the first k complete frames
(`uafp_gui.io.writer`). Reading it gives a partial `Dataset` (`complete=False`, metadata truncated
to the first k frames, a `PartialDatasetWarning`); `DatasetWriter(..., resume=True)` continues it.
Pixels are read as the one pixel-type policy says (`uafp_gui.io.pixels`).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from uafp_gui.errors import DatasetError
from uafp_gui.io.pixels import common_dtype, stored_pixels
from uafp_gui.io.schema import DatasetMeta, meta_from_text, parse_json
from uafp_gui.io.tiff import (
    Page,
    check_frame_size,
    check_tiff_header,
    first_description,
    open_tiff,
    page_errors,
    quiet_tifffile,
    walk_pages,
)


class PartialDatasetWarning(UserWarning):
    """A dataset holds fewer frames than its metadata plans (an interrupted acquisition)."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """Frames (N, H, W) uint16 or float32 in acquisition order, with their metadata.

    `complete` is False for an interrupted acquisition; `meta.frames` then describes only the
    N frames present (`planned_frame_count` is how many the acquisition intended).
    """

    meta: DatasetMeta
    frames: np.ndarray
    path: Path | None = None
    complete: bool = True
    planned_frame_count: int | None = None

    def __post_init__(self) -> None:
        if self.frames.ndim != 3 or self.frames.shape[0] != len(self.meta.frames):
            raise DatasetError(
                f"frames array {self.frames.shape} does not match {len(self.meta.frames)} "
                "frame entries: expected shape (N, H, W)"
            )
        if self.planned_frame_count is None:
            object.__setattr__(self, "planned_frame_count", len(self.meta.frames))

    @property
    def frame_count(self) -> int:
        return int(self.frames.shape[0])

    @property
    def frame_shape(self) -> tuple[int, int]:
        return (int(self.frames.shape[1]), int(self.frames.shape[2]))

    def normalised_frames(self, dtype: Any = np.float32) -> np.ndarray:
        """Frames made comparable across exposures.

        Frame k becomes `(frames[k] - camera_offset) / (exposure_ms[k] * intensity[k])`, i.e.
        dark-subtracted counts per millisecond at full LED drive. Values are not clipped, so
        noise around the dark level can go slightly negative.
        """
        scale = self.meta.exposure_scale.astype(dtype)[:, None, None]
        out = self.frames.astype(dtype, copy=True)
        out -= self.meta.camera_offset
        out /= scale
        return out


# ------------------------------------------------------------------------------ reading


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """The sidecar JSON of a TIFF: same folder and stem, `.json` suffix."""
    return Path(path).with_suffix(".json")


def _resolve_tiff_path(path: Path) -> Path:
    if path.suffix.lower() == ".json":
        for suffix in (".tif", ".tiff", ".TIF", ".TIFF"):
            candidate = path.with_suffix(suffix)
            if candidate.exists():
                return candidate
        raise DatasetError(f"{path} is a sidecar JSON but no TIFF of the same stem is next to it")
    if not path.exists():
        raise DatasetError(f"dataset not found: {path}: check the path")
    if path.is_dir():
        raise DatasetError(f"{path} is a folder: give the dataset's .tif file")
    return path


def _as_frame(array: np.ndarray, path: Path, index: int) -> np.ndarray:
    """Check one page and convert it to its stored type (`uafp_gui.io.pixels`)."""
    stored = stored_pixels(array, f"frame {index} of {path}")
    squeezed = stored.squeeze() if stored.ndim > 2 else stored
    if squeezed.ndim != 2:
        extra = (
            " (RGB or several samples per pixel: save grey-level frames, one page per frame; "
            "with tifffile pass photometric='minisblack')"
            if array.ndim == 3
            else ""
        )
        raise DatasetError(f"frame {index} of {path} has shape {array.shape}, expected a 2-D grey image{extra}")
    return squeezed


def read_tiff_frames(
    path: str | os.PathLike[str], max_pages: int | None = None
) -> tuple[list[np.ndarray], str | None, bool]:
    """Every intact page of a TIFF (converted by `_as_frame`), page 0's description, truncated.

    A file cut short (killed writer, partial copy) or whose page chain loops yields the pages
    that are complete and `truncated=True`; a file that is not a TIFF at all raises
    `DatasetError`. With `max_pages`, a file holding more pages raises `DatasetError` as soon
    as page `max_pages + 1` is found (the extra pages are never read). Sizes are checked
    against `MAX_FRAME_PIXELS` and `max_dataset_bytes()` before any page is decoded.
    """
    frames, description, truncated, _ = _read_frames(Path(path), max_pages)
    return frames, description, truncated


def _read_frames(path: Path, max_pages: int | None) -> tuple[list[np.ndarray], str | None, bool, list[Page]]:
    file_size = path.stat().st_size
    frames: list[np.ndarray] = []
    description: str | None = None
    with quiet_tifffile():  # a truncated chain is reported by us, once
        with open_tiff(path) as tif:
            pages, truncated, more = walk_pages(tif, path, file_size, max_pages)
            if more:
                raise DatasetError(
                    f"{path} holds more than {max_pages} frames but its metadata lists only {max_pages}: add "
                    "the missing entries to 'frames' (one per frame, in acquisition order) or remove extra pages"
                )
            if pages:
                check_frame_size(pages[0].shape, pages[0].dtype, path, 0, len(pages))
            for page in pages:
                check_frame_size(page.shape, page.dtype, path, page.index, 1)
                if page.index == 0:
                    description = page.tiff_page.description or None
                try:
                    array = page.tiff_page.asarray()
                except page_errors():
                    truncated = True
                    pages = pages[: page.index]
                    break
                frame = _as_frame(array, path, page.index)
                if frames and frame.shape != frames[0].shape:
                    raise DatasetError(
                        f"frame {page.index} of {path} has shape {frame.shape} but frame 0 has "
                        f"{frames[0].shape}: all frames of a dataset must be the same size"
                    )
                if frames and frame.dtype != frames[0].dtype:  # one type for the whole stack
                    dtype = common_dtype((frame.dtype, frames[0].dtype))
                    frame = frame.astype(dtype)
                    frames = [f.astype(dtype) for f in frames]
                frames.append(frame)
    if not frames:
        raise DatasetError(
            f"{path} holds no complete frame: the acquisition was interrupted before the first "
            "frame was written, or the file is corrupt"
        )
    return frames, description, truncated, pages


def read_dataset(path: str | os.PathLike[str]) -> Dataset:
    """Read and validate a dataset TIFF (embedded JSON, or a sidecar `<stem>.json` which wins).

    Raises `DatasetError` naming the problem. A file with fewer frames than its metadata plans
    opens as a partial dataset (`complete=False`, `meta.frames` truncated, a
    `PartialDatasetWarning`); more frames than planned is an error, found without reading the
    extra pages. The metadata is read first, so the page walk stops at the planned count.
    """
    path = _resolve_tiff_path(Path(path))
    sidecar = sidecar_path(path)
    if sidecar.exists():
        meta = _read_sidecar(sidecar)
        check_tiff_header(path)
    else:
        description = first_description(path)
        source = f"embedded metadata of {path}"
        parsed = parse_json(description, source) if description and description.lstrip().startswith("{") else None
        if not isinstance(parsed, dict) or "format" not in parsed:  # e.g. tifffile's {"shape"}
            raise DatasetError(
                f"{path} carries no uafp metadata and has no sidecar {sidecar.name}: write the "
                f"metadata JSON (docs/dataset_format.md) next to it as {sidecar.name}, or import it "
                "with `uafp import`"
            )
        try:
            meta = DatasetMeta.from_dict(parsed)
        except DatasetError as error:
            raise DatasetError(f"{source}: {error}") from None
    frames, _, truncated, _ = _read_frames(path, len(meta.frames))
    return _assemble(meta, frames, path, truncated)


def _read_sidecar(sidecar: Path) -> DatasetMeta:
    try:
        if sidecar.is_dir():
            raise DatasetError(f"sidecar {sidecar} is a folder: it must be the dataset's JSON file")
        text = sidecar.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"cannot read sidecar {sidecar}: {error}") from None
    return meta_from_text(text, f"sidecar {sidecar}")


def present_frames(meta: DatasetMeta, found: int, path: Path, truncated: bool, stacklevel: int = 3) -> DatasetMeta:
    """The metadata of the `found` frames present: a partial dataset (fewer than planned) warns
    (`PartialDatasetWarning`) and keeps the first `found` frame entries."""
    planned = len(meta.frames)
    if found >= planned:
        return meta
    reason = " (the file is cut short)" if truncated else ""
    warnings.warn(
        f"{path} is a partial dataset: {found} of {planned} planned frames present{reason}; "
        f"using the first {found} frame entries",
        PartialDatasetWarning,
        stacklevel=stacklevel,
    )
    return meta.with_frames(meta.frames[:found])


def _assemble(meta: DatasetMeta, frames: list[np.ndarray], path: Path, truncated: bool) -> Dataset:
    planned = len(meta.frames)
    found = len(frames)
    if found > planned:
        raise DatasetError(
            f"{path} holds {found} frames but its metadata lists only {planned}: add the missing "
            "entries to 'frames' (one per frame, in acquisition order) or remove extra pages"
        )
    complete = found == planned
    meta = present_frames(meta, found, path, truncated, stacklevel=4)
    stack = np.stack(frames, axis=0)
    return Dataset(meta=meta, frames=stack, path=path, complete=complete, planned_frame_count=planned)


def read_dataset_meta(path: str | os.PathLike[str]) -> DatasetMeta:
    """Only the metadata (sidecar or embedded, all planned frames), without reading pixels."""
    path = _resolve_tiff_path(Path(path))
    sidecar = sidecar_path(path)
    if sidecar.exists():
        return _read_sidecar(sidecar)
    description = first_description(path)
    if not description:
        raise DatasetError(f"{path} carries no uafp metadata and has no sidecar {sidecar.name}")
    return meta_from_text(description, f"embedded metadata of {path}")
