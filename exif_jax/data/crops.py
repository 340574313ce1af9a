"""Native-resolution crops from a stored JPEG: the fast region decode, and the whole-photo fallback.

Fast path (a stream rewritten with a restart marker after every MCU, see jpeg_restart): the MCUs covering
the crop plus one MCU of margin on each side (chroma upsampling reads neighbouring samples; at the photo's
own edges there is no margin and none is needed, the edge is the same edge) are cut out as a small
standalone JPEG: the stored header with the frame size patched, the MCUs' bytes row by row, the RST
markers renumbered 0..7 in their new order, EOI. Pillow's libjpeg-turbo decodes it; the crop is cut from
that. A 128-px crop of a 12-MP photo touches ~12x12 MCUs (~10-20 KB) instead of the whole photo.

Fallback (photos build-data could not rewrite): decode the whole stored JPEG and crop the PIL image,
never a full-size array copy. Both paths give exactly the pixels of a full Pillow decode + crop.
"""
from __future__ import annotations

import io
import struct
from collections.abc import Sequence
from typing import TypedDict

import numpy as np
from PIL import Image


class FastIndex(TypedDict):
    """A rewritten stream's geometry, stored in its record; the MCU tables sit in the pixel file."""
    header_len: int     # bytes before the first MCU
    sof_hw_at: int      # offset of the frame header's height field (width follows)
    mcu_h: int
    mcu_w: int
    mcus_y: int
    mcus_x: int
    table_at: int       # offset of the row-start table in the pixel file
    length_bytes: int   # 1 or 2: width of the MCU length table's entries


def region_jpeg(stream: memoryview | bytes, row_starts: np.ndarray, lengths: np.ndarray, index: FastIndex,
                height: int, width: int, y: int, x: int, h: int, w: int) -> tuple[bytes, int, int]:
    """A standalone JPEG covering rows y..y+h, columns x..x+w plus margin; returns (jpeg, y0, x0), the
    pixel position of its top-left corner in the photo.

    row_starts [mcus_y + 1] and lengths [mcus_y, mcus_x] give MCU (r, c)'s bytes in `stream`.
    """
    mh, mw = index["mcu_h"], index["mcu_w"]
    my, mx = lengths.shape
    r0, r1 = max(0, y // mh - 1), min(my, -(-(y + h) // mh) + 1)
    c0, c1 = max(0, x // mw - 1), min(mx, -(-(x + w) // mw) + 1)
    ph, pw = min(r1 * mh, height) - r0 * mh, min(c1 * mw, width) - c0 * mw
    ends = np.cumsum(lengths[r0:r1, :c1], axis=1, dtype=np.int64)  # MCU c ends at row start + ends[., c]
    before = ends[:, c0 - 1] if c0 > 0 else np.zeros(r1 - r0, np.int64)
    rows = row_starts[r0:r1].astype(np.int64)
    seg_start, seg_end = rows + before, rows + ends[:, c1 - 1]
    body = bytearray(b"".join(stream[s:e] for s, e in zip(seg_start.tolist(), seg_end.tolist())))
    # Every copied MCU but the photo's very last one ends in a 2-byte RST marker: number them in order.
    seg_len = seg_end - seg_start
    mcu_ends = (np.cumsum(seg_len) - seg_len)[:, None] + ends[:, c0:c1] - before[:, None]
    marked = mcu_ends.ravel()[:-1]
    # The last copied MCU carries a marker unless it is the photo's last; the small JPEG ends without one.
    trim = 0 if (r1 == my and c1 == mx) else 2
    arr = np.frombuffer(body, np.uint8)
    arr[marked - 1] = 0xD0 + (np.arange(marked.size) & 7)
    del arr
    if trim:
        del body[-trim:]
    hl, at = index["header_len"], index["sof_hw_at"]
    header = bytes(stream[:at]) + struct.pack(">HH", ph, pw) + bytes(stream[at + 4:hl])
    return header + bytes(body) + b"\xff\xd9", r0 * mh, c0 * mw


def _decode(data: bytes, what: str) -> Image.Image:
    try:
        im = Image.open(io.BytesIO(data))
        # No EXIF-orientation transpose (it would move the sensor's pixel grid), no resampling.
        im.load()
        return im if im.mode == "RGB" else im.convert("RGB")
    except Exception as e:  # PIL raises many types; the caller needs to know which photo broke
        raise ValueError(f"{what}: cannot decode image: {e}") from e


def crops_fast(stream: memoryview | bytes, row_starts: np.ndarray, lengths: np.ndarray, index: FastIndex,
               height: int, width: int, positions: Sequence[tuple[int, int]], size: int,
               what: str = "<bytes>") -> np.ndarray:
    """size x size crops at (y, x) positions via region decodes; uint8 [k, size, size, 3]."""
    out = np.empty((len(positions), size, size, 3), np.uint8)
    for i, (y, x) in enumerate(positions):
        jpeg, y0, x0 = region_jpeg(stream, row_starts, lengths, index, height, width, y, x, size, size)
        im = _decode(jpeg, what)
        out[i] = np.asarray(im)[y - y0:y - y0 + size, x - x0:x - x0 + size]
    return out


def crops_full(jpeg: memoryview | bytes, positions: Sequence[tuple[int, int]], size: int,
               what: str = "<bytes>") -> np.ndarray:
    """The same crops from one whole-photo decode (cropping the PIL image, no full-size array copy)."""
    im = _decode(bytes(jpeg), what)
    out = np.empty((len(positions), size, size, 3), np.uint8)
    for i, (y, x) in enumerate(positions):
        if y < 0 or x < 0 or y + size > im.height or x + size > im.width:
            raise ValueError(f"{what}: the decoded image {im.width}x{im.height} is smaller than a {size}-px crop "
                             f"at ({y}, {x}) needs (does the record's size disagree with the file?)")
        out[i] = np.asarray(im.crop((x, y, x + size, y + size)))
    return out
