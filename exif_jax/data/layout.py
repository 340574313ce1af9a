"""The on-storage layout of a build, made for range reads (the pattern of Cloud-Optimized GeoTIFF: what a
reader needs first is small and together, the pixels are tiled so a crop is one or two byte ranges).

A build folder (local, gs:// or s3://) holds, per shard i of n:

    records-i-of-n.array_record   the records (EXIF text, tags, size, where the pixels are), for tools
    records-i-of-n.pixels         one blob per photo (below)
    records-i-of-n.index          the shard's index rows (INDEX_DTYPE, .npy): where each blob is
    records-i-of-n.json           the sidecar, written last: the shard is finished

and, once every shard is, `index.npy` (all shards' rows, one read for a loader) and `summary.json`.

A blob of a photo whose stream was rewritten with a restart marker after every MCU ("banded"):

    head   FIXED (32 bytes) | record (msgpack) | JPEG header | band tables
    bands  band 0 | band 1 | ...

The MCU grid is cut into bands of BAND_ROWS MCU rows. A band stores its MCUs column by column (all of the
band's rows of column 0, then column 1, ...): a column is its MCUs' lengths (uint8, or uint16 when an MCU is
longer than 255 bytes), then the MCUs, each ending in an RST marker, then zero bytes up to a multiple of
`unit` bytes; its table entry is the column's padded length in units (uint8, or uint16 when a column is
longer than 255 units). So the MCUs a crop covers in one band are ONE byte range, and a crop reads: the head
up to the tables of the last band it needs (request 1), then one range per band it touches (1 or 2 more).
A host keeps only the index rows in memory (INDEX_DTYPE.itemsize bytes a photo); records come with the head.

A blob of a photo decoded whole ("whole": progressive, 12-bit, ...): FIXED | record | the stored JPEG.
"""
from __future__ import annotations

import re
import struct
from collections.abc import Sequence

import numpy as np

SHARD_RE = re.compile(r"^records-(\d{5})-of-(\d{5})\.array_record$")
PIXELS_SUFFIX = ".pixels"
INDEX_SUFFIX = ".index"
SIDECAR_SUFFIX = ".json"
BUILD_INDEX = "index.npy"
LAYOUT_VERSION = 3

BAND_ROWS = 24      # MCU rows a band: a 128-px crop (+ chroma context) touches 1.5 bands on average
MAGIC = b"EXJ3"
KIND_BANDED, KIND_WHOLE = 1, 2
# magic, kind, table_bytes, unit_shift, len_bytes (of an MCU length), record_len, header_len,
# body_len (whole: stream length), sof_hw_at, band_rows, mcu_h, mcu_w, mcus_y, mcus_x
_FIXED = struct.Struct("<4sBBBBIIIIHBBHH")
FIXED_LEN = 32
assert _FIXED.size <= FIXED_LEN

INDEX_DTYPE = np.dtype([
    ("shard", "<u4"), ("at", "<u8"), ("len", "<u8"),   # the blob in the shard's pixel file
    ("head_len", "<u4"),      # FIXED + record + JPEG header (banded); the whole blob (whole)
    ("kind", "u1"), ("table_bytes", "u1"), ("unit_shift", "u1"), ("mcu_h", "u1"), ("mcu_w", "u1"),
    ("band_rows", "<u2"), ("mcus_y", "<u2"), ("mcus_x", "<u2"),
    ("width", "<u4"), ("height", "<u4"),
])


def shard_name(i: int, n: int) -> str:
    """File name of shard i of n."""
    return f"records-{i:05d}-of-{n:05d}.array_record"


def sibling(shard_file: str, suffix: str) -> str:
    """The pixel file, index or sidecar that belongs to a shard file (name or path)."""
    return shard_file[: -len(".array_record")] + suffix


# ----------------------------------------------------------------------------- writing

def _band_columns(data: bytes, offsets: np.ndarray, mcus_y: int, mcus_x: int, band_rows: int
                  ) -> tuple[list[bytes], np.ndarray, int, int]:
    """The bands' bytes, the padded column lengths [bands, mcus_x] in units, table bytes and unit shift."""
    off = offsets.astype(np.int64)
    n_mcu = mcus_y * mcus_x
    lengths = np.diff(off).reshape(mcus_y, mcus_x)
    bands = -(-mcus_y // band_rows)
    # Every MCU, the photo's last included, gets a marker here (the reader drops the last one it copies).
    stored = lengths.copy()
    stored[-1, -1] += 2
    if stored.max() >= 1 << 16:
        raise ValueError(f"an MCU of {stored.max()} bytes")
    len_bytes = 1 if stored.max() < 256 else 2
    col_bytes = np.zeros((bands, mcus_x), np.int64)
    for b in range(bands):
        rows = stored[b * band_rows:(b + 1) * band_rows]
        col_bytes[b] = rows.sum(0) + len(rows) * len_bytes
    unit_shift = 4
    while (-(-col_bytes.max() >> unit_shift)) >= 1 << 16:
        unit_shift += 1
    units = -(-col_bytes >> unit_shift)
    table_bytes = 1 if units.max() < 256 else 2
    src = memoryview(data)
    out = []
    for b in range(bands):
        r0, r1 = b * band_rows, min((b + 1) * band_rows, mcus_y)
        parts = []
        heads = stored[r0:r1].T.astype("u1" if len_bytes == 1 else "<u2")  # [mcus_x, rows]
        for c in range(mcus_x):
            idx = np.arange(r0, r1) * mcus_x + c
            col = b"".join([heads[c].tobytes(), *(src[off[i]:off[i + 1]] for i in idx)])
            if idx[-1] == n_mcu - 1:
                col += b"\xff\xd0"
            pad = (int(units[b, c]) << unit_shift) - len(col)
            parts.append(col + b"\0" * pad)
        out.append(b"".join(parts))
    return out, units, table_bytes, unit_shift, len_bytes


def encode_banded(record: bytes, stream: bytes, header_len: int, sof_hw_at: int, offsets: np.ndarray,
                  mcu_h: int, mcu_w: int, mcus_y: int, mcus_x: int, *, band_rows: int = BAND_ROWS
                  ) -> tuple[bytes, dict]:
    """A banded blob from a restart-per-MCU stream (MCU i is stream[offsets[i]:offsets[i+1]]); returns the
    blob and its index fields (all but shard and at)."""
    bands, units, table_bytes, unit_shift, len_bytes = _band_columns(stream, offsets, mcus_y, mcus_x, band_rows)
    header = bytes(stream[:header_len])
    fixed = _FIXED.pack(MAGIC, KIND_BANDED, table_bytes, unit_shift, len_bytes, len(record), len(header),
                        sum(map(len, bands)), sof_hw_at, band_rows, mcu_h, mcu_w, mcus_y, mcus_x)
    fixed = fixed.ljust(FIXED_LEN, b"\0")
    tables = units.astype("u1" if table_bytes == 1 else "<u2").tobytes()
    blob = b"".join([fixed, record, header, tables, *bands])
    return blob, {"len": len(blob), "head_len": FIXED_LEN + len(record) + len(header), "kind": KIND_BANDED,
                  "table_bytes": table_bytes, "unit_shift": unit_shift, "mcu_h": mcu_h, "mcu_w": mcu_w,
                  "band_rows": band_rows, "mcus_y": mcus_y, "mcus_x": mcus_x}


def encode_whole(record: bytes, stream: bytes) -> tuple[bytes, dict]:
    """A blob holding the record and a JPEG the loader decodes whole."""
    fixed = _FIXED.pack(MAGIC, KIND_WHOLE, 0, 0, 0, len(record), 0, len(stream), 0, 0, 0, 0, 0, 0
                        ).ljust(FIXED_LEN, b"\0")
    blob = b"".join([fixed, record, stream])
    return blob, {"len": len(blob), "head_len": len(blob), "kind": KIND_WHOLE, "table_bytes": 0, "unit_shift": 0,
                  "mcu_h": 0, "mcu_w": 0, "band_rows": 0, "mcus_y": 0, "mcus_x": 0}


def index_rows(entries: Sequence[dict]) -> np.ndarray:
    """Index rows from the entries build-data collects (each with shard, at, width, height and encode_*'s)."""
    rows = np.zeros(len(entries), INDEX_DTYPE)
    for i, e in enumerate(entries):
        rows[i] = tuple(e[name] for name in INDEX_DTYPE.names)
    return rows


# ----------------------------------------------------------------------------- reading

class Head:
    """A parsed head: the record's bytes, the JPEG header, and for banded blobs where each column is."""

    __slots__ = ("record", "header", "sof_hw_at", "col_start", "col_len", "data_at", "len_bytes")

    def __init__(self, buf: bytes | memoryview, row: np.void, what: str):
        buf = memoryview(buf)
        if len(buf) < FIXED_LEN or bytes(buf[:4]) != MAGIC:
            raise ValueError(f"{what}: not an exif-jax pixel blob (layout {LAYOUT_VERSION}); the pixel file is "
                             f"damaged or from another build")
        (_, kind, table_bytes, unit_shift, len_bytes, rec_len, hdr_len, _body, sof_hw_at, band_rows, _mh, _mw,
         mcus_y, mcus_x) = _FIXED.unpack_from(buf, 0)
        self.len_bytes = len_bytes
        if kind != int(row["kind"]):
            raise ValueError(f"{what}: blob kind {kind} disagrees with the index ({int(row['kind'])})")
        self.record = bytes(buf[FIXED_LEN:FIXED_LEN + rec_len])
        at = FIXED_LEN + rec_len
        self.header = bytes(buf[at:at + hdr_len])
        self.sof_hw_at = sof_hw_at
        self.col_start = self.col_len = None
        self.data_at = 0
        if kind == KIND_BANDED:
            bands_read = (len(buf) - at - hdr_len) // (table_bytes * mcus_x)
            t = np.frombuffer(buf, "u1" if table_bytes == 1 else "<u2", bands_read * mcus_x, at + hdr_len)
            col_len = t.reshape(bands_read, mcus_x).astype(np.int64) << unit_shift
            total_bands = -(-mcus_y // band_rows)
            # Band b's data starts after all tables and the bands before it.
            starts = np.cumsum(col_len.ravel()) - col_len.ravel()
            self.col_start = starts.reshape(bands_read, mcus_x)
            self.col_len = col_len
            self.data_at = at + hdr_len + total_bands * mcus_x * table_bytes


def head_span(row: np.void, last_band: int) -> tuple[int, int]:
    """Bytes of a blob's head needed for bands 0..last_band (relative to the blob)."""
    if row["kind"] != KIND_BANDED:
        return 0, int(row["len"])
    return 0, int(row["head_len"]) + (last_band + 1) * int(row["mcus_x"]) * int(row["table_bytes"])


def region_bounds(row: np.void, y: int, x: int, h: int, w: int) -> tuple[int, int, int, int]:
    """MCU rows r0..r1 and columns c0..c1 (ends excluded) a crop's region decode needs: the crop plus one pixel
    of real context along a chroma-subsampled axis (libjpeg's fancy upsampling reads the neighbour)."""
    mh, mw = int(row["mcu_h"]), int(row["mcu_w"])
    my, mx = int(row["mcus_y"]), int(row["mcus_x"])
    gy, gx = int(mh > 8), int(mw > 8)
    r0, r1 = max(0, (y - gy) // mh), min(my, -(-(y + h + gy) // mh))
    c0, c1 = max(0, (x - gx) // mw), min(mx, -(-(x + w + gx) // mw))
    return r0, r1, c0, c1


def band_spans(row: np.void, head: Head, r0: int, r1: int, c0: int, c1: int) -> list[tuple[int, int, int]]:
    """(band, start, stop) byte ranges, relative to the blob, of columns c0..c1 in each band rows r0..r1 touch."""
    B = int(row["band_rows"])
    out = []
    for b in range(r0 // B, (r1 - 1) // B + 1):
        a = head.data_at + int(head.col_start[b, c0])
        z = head.data_at + int(head.col_start[b, c1 - 1] + head.col_len[b, c1 - 1])
        out.append((b, a, z))
    return out


_RST = np.resize(np.arange(0xD0, 0xD8, dtype=np.uint8), 1 << 16)
_ARANGE = np.arange(1 << 16)


def region_jpeg(row: np.void, head: Head, pieces: Sequence[tuple[int, bytes]], r0: int, r1: int, c0: int,
                c1: int, what: str) -> tuple[bytes, int, int, int, int]:
    """A standalone JPEG of MCU rows r0..r1 x columns c0..c1 from the band ranges `pieces` [(band, bytes)]
    band_spans named; returns (jpeg, y0, x0, ph, pw) as crops.region_jpeg does."""
    B = int(row["band_rows"])
    mh, mw = int(row["mcu_h"]), int(row["mcu_w"])
    starts_all, ends_all = [], []
    base = 0
    for b, data in pieces:
        buf = np.frombuffer(data, np.uint8)
        band_r0, band_r1 = b * B, min((b + 1) * B, int(row["mcus_y"]))
        nrow = band_r1 - band_r0
        # Each column: its nrow MCU lengths, the MCUs, padding; the column starts are known from the table.
        col0 = head.col_start[b, c0:c1] - head.col_start[b, c0]
        col_end = col0 + head.col_len[b, c0:c1]
        lb = head.len_bytes
        if col_end[-1] != len(buf):
            raise ValueError(f"{what}: band {b}: its bytes disagree with its table; the pixel file is damaged")
        lo, hi = max(r0, band_r0) - band_r0, min(r1, band_r1) - band_r0
        try:
            hb = buf[col0[:, None] + _ARANGE[None, :nrow * lb]]
            lens = hb if lb == 1 else hb[:, 0::2] | hb[:, 1::2].astype(np.int64) << 8
            e = np.cumsum(lens, axis=1, dtype=np.int64)
            e += (col0 + nrow * lb)[:, None]                        # [ncol, nrow] MCU ends
            # Every MCU used must end in an RST marker, inside its column.
            bad = (e[:, -1] > col_end).any() or (buf[e[:, lo:hi] - 2] != 0xFF).any()
        except IndexError:
            bad = True
        if bad:
            raise ValueError(f"{what}: band {b}: an MCU does not end in its marker; the pixel file is damaged")
        s = e - lens
        starts_all.append((s[:, lo:hi].T + base).ravel())  # row-major over this band's rows
        ends_all.append((e[:, lo:hi].T + base).ravel())
        base += len(buf)
    joined = b"".join(d for _, d in pieces)
    s = np.concatenate(starts_all)
    e = np.concatenate(ends_all)
    mv = memoryview(joined)
    body = bytearray().join([mv[a:z] for a, z in zip(s.tolist(), e.tolist())])
    marks = np.cumsum(e - s) - 1
    np.frombuffer(body, np.uint8)[marks] = _RST[: marks.size] if marks.size <= _RST.size else \
        (0xD0 + (np.arange(marks.size) & 7)).astype(np.uint8)
    del body[-2:]  # the small JPEG's last MCU takes no marker
    height, width = int(row["height"]), int(row["width"])
    ph, pw = min(r1 * mh, height) - r0 * mh, min(c1 * mw, width) - c0 * mw
    hdr, at = head.header, head.sof_hw_at
    return (b"".join((hdr[:at], struct.pack(">HH", ph, pw), hdr[at + 4:], body, b"\xff\xd9")),
            r0 * mh, c0 * mw, ph, pw)


def whole_stream(head_buf: bytes | memoryview, row: np.void) -> bytes:
    """The JPEG of a whole-decode blob (its head is the whole blob)."""
    buf = memoryview(head_buf)
    rec_len = _FIXED.unpack_from(buf, 0)[5]
    return bytes(buf[FIXED_LEN + rec_len:])
