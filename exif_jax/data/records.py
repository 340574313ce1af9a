"""One dataset record: a photo's EXIF and where its pixels are, serialized with msgpack.

Version 2 (build-data since the camera-resolution input): the record is small (~1 KB); the pixels are a
JPEG stream in the shard's pixel file (exif_jax.data.pixel_store). For most photos that stream is the
original rewritten losslessly with a restart marker after every MCU (same DCT coefficients and
quantization tables, so the same decoded pixels) and `fast` says where its MCUs are; otherwise it is the
original file and `fast_reason` says why. `original` holds the untouched file when build-data ran with
--keep-original. Version 1 records (the original bytes inline as `image`) are still read.

In builds of the range-read layout (exif_jax/data/layout.py, `fast["layout"] == 3`), `jpeg` is the photo's
whole blob in the pixel file (its head holds this record again, then the MCU bands) and `fast` the band
geometry; in earlier builds `jpeg` is the stream itself and `fast` a crops.FastIndex.
"""
from __future__ import annotations

from typing import Any, NotRequired, TypedDict

import msgpack

from exif_jax.data.crops import FastIndex
from exif_jax.data.pixel_store import Blob

RECORD_VERSION = 2


class Record(TypedDict):
    text: str             # rendered EXIF text (exif.render_text)
    tags: dict[str, str]  # tag name -> metadata-extractor description (default tag set only)
    width: int
    height: int
    camera: str           # "Make|Model", the key for camera-held-out splits
    path: str             # source path (or YFCC photo id) as given to build-data
    sha256: str           # of the original file
    bytes: int            # size of the original file
    jpeg: Blob | None     # the stream the loader decodes (rewritten, or the original file); None: version 1
    fast: FastIndex | None
    fast_reason: str      # "" when `fast` is set, else why the photo is decoded whole
    original: Blob | None  # the original file, when kept
    image: NotRequired[bytes]  # version 1: the original bytes inline; read_records(with_image=True): the stream


_FIELDS = ("text", "tags", "width", "height", "camera", "path", "sha256", "bytes", "jpeg", "fast",
           "fast_reason", "original")
_V1_FIELDS = ("image", "text", "tags", "width", "height", "camera", "path", "sha256")


def encode_record(rec: Record) -> bytes:
    """Serialize a record to bytes for an ArrayRecord shard."""
    missing = [k for k in _FIELDS if k not in rec]
    if missing:
        raise ValueError(f"record is missing fields {missing}")
    payload: dict[str, Any] = {k: rec[k] for k in _FIELDS}
    payload["v"] = RECORD_VERSION
    return msgpack.packb(payload, use_bin_type=True)


def decode_record(data: bytes) -> Record:
    """Inverse of encode_record; version 1 records come back with `image` and no pixel-file fields."""
    payload = msgpack.unpackb(data, raw=False)
    v = payload.pop("v", None) if isinstance(payload, dict) else None
    if v == RECORD_VERSION:
        return payload  # type: ignore[return-value]
    if v == 1 and all(k in payload for k in _V1_FIELDS):
        return {**payload, "bytes": len(payload["image"]), "jpeg": None, "fast": None,
                "fast_reason": "record_version_1", "original": None}  # type: ignore[return-value]
    raise ValueError(f"not an exif-jax record (version {v!r})")
