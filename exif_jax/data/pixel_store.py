"""Pixel files: each shard's photo blobs, written once. Builds of this version write the range-read layout
of exif_jax/data/layout.py through `PixelWriter.add_blob` and are read by byte ranges (reader.Build); the
layout below is that of earlier builds (layout 2), still read from local disk by `PixelReader`.

A shard `records-i-of-n.array_record` holds small records (EXIF text, tags, size, where the pixels are);
its pixels live beside it in `records-i-of-n.pixels`, one blob per photo:

    [JPEG stream][pad to 4][row starts: uint32, mcus_y + 1][MCU lengths: uint8 or uint16, mcus_y * mcus_x]

The stream is a complete JPEG (the restart-per-MCU rewrite, or the original file when it could not be
rewritten); the two tables exist only for rewritten streams. A crop reads its record (~1 KB) and then only
the bytes of the MCUs it covers, straight from the page cache: no per-photo copy, whatever the photo's size.
Keeping everything but these bytes out of the record is what makes one crop per photo cheap (a 3 MB record
costs ~2-8 ms to read; see docs/paper_scale.md §3).
"""
from __future__ import annotations

import mmap
import os
from typing import TypedDict

import numpy as np

PIXELS_SUFFIX = ".pixels"


class Blob(TypedDict):
    """Where a byte string lives: pixel file name (in the shard's folder), offset, length."""
    file: str
    at: int
    len: int


def pixels_path(shard_path: str) -> str:
    """The pixel file that belongs to a shard file."""
    return shard_path[: -len(".array_record")] + PIXELS_SUFFIX


class PixelWriter:
    """Appends blobs to one pixel file (under a temporary name until `commit`)."""

    def __init__(self, path: str, tmp_suffix: str = ".tmp"):
        self.path, self.tmp = path, f"{path}{tmp_suffix}"
        self._f = open(self.tmp, "wb")
        self.size = 0

    def _write(self, data: bytes | memoryview | np.ndarray) -> int:
        at = self.size
        mv = memoryview(data).cast("B")
        self._f.write(mv)
        self.size += mv.nbytes
        return at

    def add(self, data: bytes) -> Blob:
        """Store raw bytes (an original file)."""
        return Blob(file=os.path.basename(self.path), at=self._write(data), len=len(data))

    def add_blob(self, data: bytes) -> int:
        """Append one blob; returns its offset."""
        return self._write(data)

    def add_indexed(self, stream: bytes, row_starts: np.ndarray, lengths: np.ndarray) -> tuple[Blob, int]:
        """Store a rewritten stream and its MCU tables; returns (stream blob, offset of the row-start table)."""
        blob = self.add(stream)
        pad = -self.size % 4
        if pad:
            self._write(b"\0" * pad)
        table_at = self._write(np.ascontiguousarray(row_starts, "<u4"))
        self._write(np.ascontiguousarray(lengths, "<u2" if lengths.dtype == np.uint16 else "u1"))
        return blob, table_at

    def commit(self) -> None:
        """Flush to disk and move into place."""
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        """Drop the temporary file."""
        self._f.close()
        if os.path.exists(self.tmp):
            os.remove(self.tmp)


class PixelReader:
    """Memory maps of a build's pixel files, opened on first use (one per process; not pickled)."""

    def __init__(self, data_dir: str):
        self.data_dir = data_dir
        self._maps: dict[str, tuple[mmap.mmap, memoryview, np.ndarray]] = {}

    def __getstate__(self) -> dict:
        return {"data_dir": self.data_dir, "_maps": {}}  # grain workers reopen their own maps

    def _map(self, name: str) -> tuple[memoryview, np.ndarray]:
        got = self._maps.get(name)
        if got is None:
            path = os.path.join(self.data_dir, name)
            with open(path, "rb") as f:
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            got = (mm, memoryview(mm), np.frombuffer(mm, np.uint8))
            self._maps[name] = got
        return got[1], got[2]

    def bytes_of(self, blob: Blob) -> memoryview:
        """The blob's bytes, zero-copy."""
        mv, _ = self._map(blob["file"])
        if blob["at"] + blob["len"] > len(mv):
            raise ValueError(f"{os.path.join(self.data_dir, blob['file'])} is shorter than its records say "
                             f"(truncated copy?); rebuild with exif-jax build-data")
        return mv[blob["at"]:blob["at"] + blob["len"]]

    def tables(self, blob: Blob, table_at: int, mcus_y: int, mcus_x: int, length_bytes: int
               ) -> tuple[np.ndarray, np.ndarray]:
        """(row starts uint32 [mcus_y + 1], MCU lengths [mcus_y, mcus_x]) as views of the file."""
        _, arr = self._map(blob["file"])
        starts = np.frombuffer(arr, "<u4", mcus_y + 1, table_at)
        lengths = np.frombuffer(arr, "u1" if length_bytes == 1 else "<u2", mcus_y * mcus_x,
                                table_at + 4 * (mcus_y + 1)).reshape(mcus_y, mcus_x)
        return starts, lengths

    def close(self) -> None:
        """Unmap everything (views handed out must be gone)."""
        for mm, mv, arr in self._maps.values():
            del arr
            mv.release()
            mm.close()
        self._maps.clear()
