"""Native-resolution crops from a stored JPEG: the fast region decode, and the whole-photo fallback.

Fast path (a stream rewritten with a restart marker after every MCU, see jpeg_restart): the MCUs covering
the crop, widened where needed so one pixel of real context surrounds it along each chroma-subsampled axis
(chroma upsampling reads the neighbouring chroma sample; at the photo's own edges the edge is the same
edge), are cut out as a small standalone JPEG: the stored header with the frame size patched, the MCUs'
bytes row by row, the RST markers renumbered 0..7 in their new order, EOI. Pillow's libjpeg-turbo
decodes it; the crop is cut from that. A 128-px crop of a 12-MP photo touches ~12x12 MCUs (~10-20 KB)
instead of the whole photo.

Fallback (photos build-data could not rewrite): decode the whole stored JPEG and crop the PIL image,
never a full-size array copy. Both paths give exactly the pixels of a full Pillow decode + crop.

decode_rgb / read_rgb: a whole photo as RGB by the same rule (train and eval see the same pixels).
"""
from __future__ import annotations

import io
import os
import struct
from collections.abc import Sequence
from typing import TypedDict

import numpy as np
from PIL import Image, UnidentifiedImageError


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
                height: int, width: int, y: int, x: int, h: int, w: int) -> tuple[bytes, int, int, int, int]:
    """A standalone JPEG covering rows y..y+h, columns x..x+w plus context; returns (jpeg, y0, x0, ph, pw):
    the pixel position of its top-left corner in the photo, and its size.

    row_starts [mcus_y + 1] and lengths [mcus_y, mcus_x] give MCU (r, c)'s bytes in `stream`.
    """
    mh, mw = index["mcu_h"], index["mcu_w"]
    my, mx = lengths.shape
    # libjpeg's fancy upsampling of subsampled chroma treats the small JPEG's first and last pixel row or
    # column as an image edge (it repeats the chroma sample instead of reading its neighbour): keep one
    # pixel of real context on each side of the crop along a subsampled axis (MCU of 16 px); 8-px MCUs
    # mean no subsampling along that axis and need none.
    gy, gx = int(mh > 8), int(mw > 8)
    r0, r1 = max(0, (y - gy) // mh), min(my, -(-(y + h + gy) // mh))
    c0, c1 = max(0, (x - gx) // mw), min(mx, -(-(x + w + gx) // mw))
    ph, pw = min(r1 * mh, height) - r0 * mh, min(c1 * mw, width) - c0 * mw
    # Byte offsets of MCU c0 .. c1 (ends included) in each row: cumulative lengths from the row start.
    ends = np.cumsum(lengths[r0:r1, :c1], axis=1, dtype=np.int64)
    ends += row_starts[r0:r1, None]
    starts = ends[:, c0 - 1] if c0 else row_starts[r0:r1].astype(np.int64)
    spans = np.column_stack((starts, ends[:, -1])).tolist()
    body = bytearray().join([stream[a:b] for a, b in spans])
    # Every copied MCU but the photo's very last one ends in a 2-byte RST marker: number them in order.
    shift = np.cumsum(ends[:, -1] - starts) - ends[:, -1]  # row i's bytes start at starts[i] + shift[i]
    marked = (ends[:, c0:] + shift[:, None]).ravel()[:-1] - 1
    np.frombuffer(body, np.uint8)[marked] = _RST[: marked.size]
    if not (r1 == my and c1 == mx):
        del body[-2:]  # the small JPEG's last MCU takes no marker
    hl, at = index["header_len"], index["sof_hw_at"]
    return (b"".join((stream[:at], struct.pack(">HH", ph, pw), stream[at + 4:hl], body, b"\xff\xd9")),
            r0 * mh, c0 * mw, ph, pw)


_RST = np.resize(np.arange(0xD0, 0xD8, dtype=np.uint8), 1 << 16)  # RST0..7 repeated, to number markers


def decode_sized(data: bytes, width: int, height: int, what: str) -> np.ndarray:
    """Decode a JPEG whose frame size we wrote ourselves, straight into an image of that size; uint8
    [height, width, 3].

    The same libjpeg decompression as Image.open(...).load() (Pillow's own decoder and "raw" packer with
    the arguments Image.open and tobytes pass: the pixels are identical, tested) without Pillow's marker
    parsing in Python and its per-call wrappers, which together cost as much as decoding a small region.
    """
    im = Image.core.new("RGB", (width, height))
    dec = Image.core.jpeg_decoder("RGB", "RGB", "")
    try:
        dec.setimage(im, (0, 0, width, height))
        consumed, err = dec.decode(data)
    finally:
        dec.cleanup()
    if consumed >= 0 or err < 0:  # consumed < 0: the decoder finished; err < 0: libjpeg reported an error
        raise ValueError(f"{what}: region decode failed (libjpeg status {err}); the pixel file may be damaged")
    enc = Image.core.raw_encoder("RGB", "RGB")
    chunks = []
    try:
        enc.setimage(im, (0, 0, width, height))
        while True:
            _, err, chunk = enc.encode(3 * width * height + 64)
            chunks.append(chunk)
            if err:
                break
    finally:
        enc.cleanup()
    if err < 0:
        raise ValueError(f"{what}: packing the decoded region failed ({err})")
    return np.frombuffer(chunks[0] if len(chunks) == 1 else b"".join(chunks), np.uint8).reshape(height, width, 3)


def crops_fast(stream: memoryview | bytes, row_starts: np.ndarray, lengths: np.ndarray, index: FastIndex,
               height: int, width: int, positions: Sequence[tuple[int, int]], size: int,
               what: str = "<bytes>") -> np.ndarray:
    """size x size crops at (y, x) positions via region decodes; uint8 [k, size, size, 3]."""
    out = np.empty((len(positions), size, size, 3), np.uint8)
    for i, (y, x) in enumerate(positions):
        jpeg, y0, x0, ph, pw = region_jpeg(stream, row_starts, lengths, index, height, width, y, x, size, size)
        out[i] = decode_sized(jpeg, pw, ph, what)[y - y0:y - y0 + size, x - x0:x - x0 + size]
    return out


def _open_rgb(data: bytes, what: str) -> Image.Image:
    """The one decode rule train and eval share: the stored pixels as RGB, no EXIF-orientation transpose (it
    would move the sensor's pixel grid), no resampling; an error names `what` (the photo) and the reason."""
    try:
        im = Image.open(io.BytesIO(data))
        im.load()
        return im if im.mode == "RGB" else im.convert("RGB")
    except UnidentifiedImageError:
        raise ValueError(f"{what}: cannot decode image: not an image format Pillow reads") from None
    except Exception as e:  # PIL raises many types; the caller needs to know which photo broke
        raise ValueError(f"{what}: cannot decode image: {type(e).__name__}: {e}") from e


def decode_rgb(data: bytes, what: str = "<bytes>") -> np.ndarray:
    """Image bytes -> uint8 [H, W, 3] RGB at native resolution, as the trainer's crops see them."""
    return np.asarray(_open_rgb(bytes(data), what))


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """A photo file -> uint8 [H, W, 3] RGB (decode_rgb); a missing or unreadable file is a ValueError naming it."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except OSError as e:  # a directory, no permission, an I/O error
        raise ValueError(f"{path}: cannot read: {e.strerror or e}") from None
    return decode_rgb(data, str(path))


def crops_full(jpeg: memoryview | bytes, positions: Sequence[tuple[int, int]], size: int,
               what: str = "<bytes>") -> np.ndarray:
    """The same crops from one whole-photo decode (cropping the PIL image, no full-size array copy)."""
    im = _open_rgb(bytes(jpeg), what)
    out = np.empty((len(positions), size, size, 3), np.uint8)
    for i, (y, x) in enumerate(positions):
        if y < 0 or x < 0 or y + size > im.height or x + size > im.width:
            raise ValueError(f"{what}: the decoded image {im.width}x{im.height} is smaller than a {size}-px crop "
                             f"at ({y}, {x}) needs (does the record's size disagree with the file?)")
        out[i] = np.asarray(im.crop((x, y, x + size, y + size)))
    return out
