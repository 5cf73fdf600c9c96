"""A minimal crash-safe writer of plain multi-page TIFF stacks (one uncompressed strip per page).

Why not `tifffile.TiffWriter`: it links the previous page to the new one *before* it writes
the new page, so a process killed mid-frame leaves a chain that points into missing bytes.
This writer appends the pixel data, then the page's IFD, flushes, and only then patches the
previous "next IFD" pointer (or the header) to the new page. At every instant the file is
therefore a valid baseline TIFF holding the pages completed so far (plus unreferenced bytes at
the end, which every reader ignores). The output is the simplest TIFF there is - little-endian,
grey, uncompressed, one strip per page - so Fiji, napari and tifffile open it as a stack.
BigTIFF is used only when the planned file would not fit in classic TIFF's 4 GiB.
"""

from __future__ import annotations

import os
import struct
from fractions import Fraction
from typing import BinaryIO

import numpy as np

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
