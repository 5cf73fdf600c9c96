"""TIFF internals of the dataset format: the crash-safe stack writer and the bounded page walk.

Writing (`TiffStackWriter`), why not `tifffile.TiffWriter`: it links the previous page to the new
one *before* it writes the new page, so a process killed mid-frame leaves a chain that points into
missing bytes. This writer appends the pixel data, then the page's IFD, flushes, and only then
patches the previous "next IFD" pointer (or the header) to the new page. At every instant the file
is therefore a valid baseline TIFF holding the pages completed so far (plus unreferenced bytes at
the end, which every reader ignores). The output is the simplest TIFF there is - little-endian,
grey, uncompressed, one strip per page - so Fiji, napari and tifffile open it as a stack.
BigTIFF is used only when the planned file would not fit in classic TIFF's 4 GiB.

Reading (`walk_pages`): the complete pages of a file in chain order, never more than asked for,
loop-checked, each page's extent read from its IFD (a cut description shows there: tifffile drops
such a tag silently), sizes checked against the documented limits before anything is decoded.
The dataset reader, the writer's resume and the importers share it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import struct
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from uafp_gui.errors import DatasetError
from uafp_gui.limits import MAX_DATASET_BYTES_ENV, MAX_FRAME_PIXELS, max_dataset_bytes

# TIFF field types
_ASCII, _SHORT, _LONG, _RATIONAL, _LONG8 = 2, 3, 4, 5, 16
_TYPE_SIZE = {_ASCII: 1, _SHORT: 2, _LONG: 4, _RATIONAL: 8, _LONG8: 8}
_TYPE_CODE = {_SHORT: "H", _LONG: "I", _LONG8: "Q"}

# tags
_NEW_SUBFILE_TYPE = 254
_IMAGE_WIDTH = 256
_IMAGE_LENGTH = 257
_BITS_PER_SAMPLE = 258
_COMPRESSION = 259
_PHOTOMETRIC = 262
_IMAGE_DESCRIPTION = 270
_STRIP_OFFSETS = 273
_SAMPLES_PER_PIXEL = 277
_ROWS_PER_STRIP = 278
_STRIP_BYTE_COUNTS = 279
_X_RESOLUTION = 282
_Y_RESOLUTION = 283
_PLANAR_CONFIGURATION = 284
_RESOLUTION_UNIT = 296
_SOFTWARE = 305
_SAMPLE_FORMAT = 339

_SAMPLE_FORMATS = {"u": 1, "i": 2, "f": 3}
CLASSIC_TIFF_LIMIT_BYTES = 2**32 - 2**26  # leave room for IFDs and descriptions
_ALIGN = 16


def _rational(value: float) -> tuple[int, int]:
    fraction = Fraction(value).limit_denominator(10**6)
    while fraction.numerator >= 2**32 or fraction.denominator >= 2**32:
        fraction = Fraction(fraction.numerator // 2, max(1, fraction.denominator // 2))
    return fraction.numerator, fraction.denominator


class TiffStackWriter:
    """Append 2-D frames to a new TIFF file, one page each, leaving a valid file after each.

    `resolution_px_per_cm`, when given, is written as X/YResolution with ResolutionUnit
    centimetre so that image viewers show the pixel size.
    """

    def __init__(self, fh: BinaryIO, bigtiff: bool = False) -> None:
        self._fh = fh
        self.bigtiff = bigtiff
        self.pages_written = 0
        if bigtiff:
            fh.write(b"II" + struct.pack("<HHHQ", 43, 8, 0, 0))
            self._link_position = 8
        else:
            fh.write(b"II" + struct.pack("<HI", 42, 0))
            self._link_position = 4
        fh.flush()

    @classmethod
    def resume(cls, fh: BinaryIO, bigtiff: bool, link_position: int, pages_written: int) -> TiffStackWriter:
        """Append to an existing stack whose last complete page's next-IFD pointer is at
        `link_position` (that pointer must be 0 or point past the end of the valid pages)."""
        writer = cls.__new__(cls)
        writer._fh = fh
        writer.bigtiff = bigtiff
        writer.pages_written = pages_written
        writer._link_position = link_position
        return writer

    def write_page(
        self,
        frame: np.ndarray,
        description: str | None = None,
        software: str | None = None,
        resolution_px_per_cm: float | None = None,
    ) -> None:
        if frame.ndim != 2:
            raise ValueError(f"a TIFF page must be 2-D, got shape {frame.shape}")
        kind = frame.dtype.kind
        if kind not in _SAMPLE_FORMATS:
            raise ValueError(f"unsupported pixel type {frame.dtype}")
        data = np.ascontiguousarray(frame, dtype=frame.dtype.newbyteorder("<")).tobytes()
        height, width = frame.shape
        fh = self._fh
        fh.seek(0, os.SEEK_END)
        data_offset = self._align(fh.tell())
        fh.seek(data_offset)
        fh.write(data)
        ifd_offset = self._align(data_offset + len(data))

        offset_type = _LONG8 if self.bigtiff else _LONG
        entries: list[tuple[int, int, int, object]] = [
            (_NEW_SUBFILE_TYPE, _LONG, 1, 0),
            (_IMAGE_WIDTH, _LONG, 1, width),
            (_IMAGE_LENGTH, _LONG, 1, height),
            (_BITS_PER_SAMPLE, _SHORT, 1, frame.dtype.itemsize * 8),
            (_COMPRESSION, _SHORT, 1, 1),
            (_PHOTOMETRIC, _SHORT, 1, 1),  # min-is-black grey
            (_STRIP_OFFSETS, offset_type, 1, data_offset),
            (_SAMPLES_PER_PIXEL, _SHORT, 1, 1),
            (_ROWS_PER_STRIP, _LONG, 1, height),
            (_STRIP_BYTE_COUNTS, offset_type, 1, len(data)),
            (_PLANAR_CONFIGURATION, _SHORT, 1, 1),
            (_SAMPLE_FORMAT, _SHORT, 1, _SAMPLE_FORMATS[kind]),
        ]
        if description is not None:
            text = description.encode("ascii") + b"\x00"
            entries.append((_IMAGE_DESCRIPTION, _ASCII, len(text), text))
        if software is not None:
            text = software.encode("ascii", "replace") + b"\x00"
            entries.append((_SOFTWARE, _ASCII, len(text), text))
        if resolution_px_per_cm is not None:
            numerator, denominator = _rational(resolution_px_per_cm)
            packed = struct.pack("<II", numerator, denominator)
            entries.append((_X_RESOLUTION, _RATIONAL, 1, packed))
            entries.append((_Y_RESOLUTION, _RATIONAL, 1, packed))
            entries.append((_RESOLUTION_UNIT, _SHORT, 1, 3))
        entries.sort(key=lambda entry: entry[0])

        ifd, next_pointer_position = self._encode_ifd(entries, ifd_offset)
        fh.seek(ifd_offset)
        fh.write(ifd)
        fh.flush()
        # Only now is the page complete on disk: link it into the chain.
        fh.seek(self._link_position)
        fh.write(struct.pack("<Q" if self.bigtiff else "<I", ifd_offset))
        fh.flush()
        self._link_position = next_pointer_position
        self.pages_written += 1

    def _encode_ifd(self, entries: list[tuple[int, int, int, object]], ifd_offset: int) -> tuple[bytes, int]:
        """Encode an IFD placed at `ifd_offset`; values that do not fit inline follow it."""
        if self.bigtiff:
            count_format, entry_size, inline_size, offset_format = "<Q", 20, 8, "<Q"
        else:
            count_format, entry_size, inline_size, offset_format = "<H", 12, 4, "<I"
        head_size = struct.calcsize(count_format)
        pointer_size = struct.calcsize(offset_format)
        table_size = head_size + entry_size * len(entries) + pointer_size
        extra_offset = ifd_offset + table_size
        table = bytearray(struct.pack(count_format, len(entries)))
        extra = bytearray()
        for tag, field_type, count, value in entries:
            if isinstance(value, bytes):
                payload = value
            else:
                payload = struct.pack("<" + _TYPE_CODE[field_type], int(value))  # type: ignore[call-overload]
            count_code = "Q" if self.bigtiff else "I"
            table += struct.pack("<HH" + count_code, tag, field_type, count)
            if len(payload) <= inline_size:
                table += payload.ljust(inline_size, b"\x00")
            else:
                if (extra_offset + len(extra)) % 2:
                    extra += b"\x00"  # values must start on a word boundary
                table += struct.pack(offset_format, extra_offset + len(extra))
                extra += payload
        next_pointer_position = ifd_offset + len(table)
        table += struct.pack(offset_format, 0)
        return bytes(table + extra), next_pointer_position

    @staticmethod
    def _align(position: int) -> int:
        return (position + _ALIGN - 1) // _ALIGN * _ALIGN


# ------------------------------------------------------------------------------ reading


_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def check_tiff_header(path: Path) -> None:
    """`DatasetError` saying in words what `path` is when it is not a TIFF (or is cut before its header)."""
    with open(path, "rb") as fh:
        head = fh.read(8)
    if len(head) < 8 and any(magic.startswith(head) for magic in _TIFF_MAGICS):
        raise DatasetError(f"{path} is cut short ({len(head)} bytes): no frame was written; acquire again")
    head = head[:4]
    if head not in _TIFF_MAGICS:
        kind = next((name for magic, name in _OTHER_FORMATS if head.startswith(magic)), "not a TIFF file")
        raise DatasetError(
            f"{path} is {kind}: datasets are multi-page TIFF stacks (docs/dataset_format.md); use "
            "`uafp import folder` for a folder of PNG/TIFF frames, `uafp import zheng` for the MAT file"
        )


# What a file that is not a TIFF probably is: said in words, never as raw bytes.
_OTHER_FORMATS = (
    (b"\x89PNG", "a PNG image, not a TIFF stack"),
    (b"\xff\xd8\xff", "a JPEG image, not a TIFF stack"),
    (b"MATL", "a MATLAB file, not a TIFF stack"),
    (b"\x89HDF", "an HDF5 (MATLAB v7.3) file, not a TIFF stack"),
    (b"PK\x03\x04", "a ZIP archive, not a TIFF stack"),
    (b"{", "a JSON file, not a TIFF stack"),
)


_TIFF_TYPE_SIZES = {
    1: 1,
    2: 1,
    3: 2,
    4: 4,
    5: 8,
    6: 1,
    7: 1,
    8: 2,
    9: 4,
    10: 8,
    11: 4,
    12: 8,
    13: 4,
    16: 8,
    17: 8,
    18: 8,
}


def _ifd_end(fh: Any, offset: int, tiff: Any) -> tuple[int, int]:
    """(end of an IFD including its out-of-line tag values, position of its next-IFD pointer).
    A cut description shows here: tifffile drops such a tag silently."""
    byteorder = tiff.byteorder
    fh.seek(offset)
    head = fh.read(tiff.tagnosize)
    if len(head) < tiff.tagnosize:
        return 2**63, 0
    count = struct.unpack(tiff.tagnoformat, head)[0]
    table = fh.read(count * tiff.tagsize)
    if len(table) < count * tiff.tagsize:
        return 2**63, 0
    link_position = offset + tiff.tagnosize + count * tiff.tagsize
    end = link_position + tiff.offsetsize
    inline = tiff.tagoffsetthreshold
    for k in range(count):
        entry = table[k * tiff.tagsize : (k + 1) * tiff.tagsize]
        _, type_code = struct.unpack(byteorder + "HH", entry[:4])
        value_count = struct.unpack(tiff.offsetformat, entry[4 : 4 + tiff.offsetsize])[0]
        size = value_count * _TIFF_TYPE_SIZES.get(type_code, 1)
        if size > inline:
            value_offset = struct.unpack(tiff.offsetformat, entry[4 + tiff.offsetsize :])[0]
            end = max(end, value_offset + size)
    return end, link_position


@contextlib.contextmanager
def quiet_tifffile():
    """Silence tifffile's own log while we read: the problems it logs reach the user as our errors."""
    log = logging.getLogger("tifffile")
    previous = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(previous)


class Page:
    """Where one complete page lies in the file (for reading it, or appending after it)."""

    __slots__ = ("index", "offset", "shape", "dtype", "end", "link_position", "tiff_page")

    def __init__(self, index: int, offset: int, shape: tuple[int, ...], dtype: np.dtype, end: int,
                 link_position: int, tiff_page: Any) -> None:
        self.index, self.offset, self.shape, self.dtype = index, offset, shape, dtype
        self.end, self.link_position, self.tiff_page = end, link_position, tiff_page


# tifffile's own errors, codec errors (zlib.error, imagecodecs' RuntimeError subclasses) and the
# few Python errors a corrupt structure makes tifffile raise: all mean "this page is broken".
def page_errors() -> tuple[type[BaseException], ...]:
    import zlib

    import tifffile

    return (tifffile.TiffFileError, OSError, ValueError, TypeError, KeyError, IndexError, struct.error,
            zlib.error, RuntimeError, NotImplementedError, EOFError, OverflowError)


def check_frame_size(shape: tuple[int, ...], dtype: np.dtype, path: Path, index: int, pages: int) -> None:
    """Refuse, before decoding, a page or a stack larger than the documented limits."""
    pixels = math.prod(int(n) for n in shape) if shape else 0
    if pixels > MAX_FRAME_PIXELS:
        raise DatasetError(
            f"frame {index} of {path} is {'x'.join(str(n) for n in shape)} pixels, more than the "
            f"{MAX_FRAME_PIXELS} pixels a frame may have: crop the frames (--roi) or bin the camera"
        )
    total = pixels * max(1, np.dtype(dtype).itemsize) * pages
    limit = max_dataset_bytes()
    if total > limit:
        raise DatasetError(
            f"{path} would need {total / 2**30:.1f} GiB in memory ({pages} frames of "
            f"{'x'.join(str(n) for n in shape)} {np.dtype(dtype).name}), more than the "
            f"{limit / 2**30:.1f} GiB limit: crop or bin the frames, or raise {MAX_DATASET_BYTES_ENV}"
        )


def walk_pages(tif: Any, path: Path, file_size: int, max_pages: int | None) -> tuple[list[Any], bool, bool]:
    """The complete pages of an open TiffFile, in chain order, never more than `max_pages` + 1.

    Returns (pages, truncated, more): `truncated` when the chain ends in a page that is cut short,
    corrupt or loops back to a page already seen (kept pages are the ones before it); `more` when
    a page beyond `max_pages` exists (it is not read).
    """
    pages: list[Any] = []
    seen: set[int] = set()
    errors = page_errors()
    index = 0
    while True:
        if max_pages is not None and index > max_pages:
            return pages, False, True
        try:
            page = tif.pages.get(index) if hasattr(tif.pages, "get") else tif.pages[index]
        except IndexError:
            return pages, False, False
        except errors:
            return pages, True, False
        if page is None:
            return pages, False, False
        offset = int(page.offset)
        if offset in seen:  # the chain loops back: a corrupt file, never an endless one
            return pages, True, False
        seen.add(offset)
        if max_pages is not None and index == max_pages:
            return pages, False, True
        try:
            ends = [int(o) + int(c) for o, c in zip(page.dataoffsets, page.databytecounts, strict=False)]
            ifd_end, link_position = _ifd_end(tif.filehandle, offset, tif.tiff)
            shape = tuple(int(n) for n in page.shape)  # a corrupt size tag can make these anything
            dtype = np.dtype(page.dtype)
        except errors:
            return pages, True, False
        if len(ends) == 0 or max(ends) > file_size or ifd_end > file_size:
            return pages, True, False
        pages.append(Page(index, offset, shape, dtype, max(max(ends), ifd_end), link_position, page))
        index += 1


def open_tiff(path: Path) -> Any:
    import tifffile

    check_tiff_header(path)
    try:
        return tifffile.TiffFile(path)
    except page_errors() as error:  # header fine but first directory missing or broken
        raise DatasetError(
            f"{path} holds no complete frame ({error}): the acquisition was interrupted "
            "before the first frame was written, or the file is corrupt"
        ) from None


def first_description(path: Path) -> str | None:
    """Page 0's ImageDescription; `DatasetError` when page 0 is not complete."""
    with quiet_tifffile(), open_tiff(path) as tif:
        pages, _, _ = walk_pages(tif, path, path.stat().st_size, 1)
        if not pages:
            raise DatasetError(
                f"{path} holds no complete frame: the acquisition was interrupted before the first "
                "frame was written, or the file is corrupt"
            )
        try:
            return pages[0].tiff_page.description or None
        except page_errors():
            return None
