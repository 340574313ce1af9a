"""One dataset record: the photo's original bytes plus its EXIF, serialized with msgpack.

The file bytes are stored unchanged (never re-encoded): the camera's compression traces are the signal.
"""
from __future__ import annotations

from typing import Any, TypedDict

import msgpack

RECORD_VERSION = 1


class Record(TypedDict):
    image: bytes          # the original file bytes, unchanged
    text: str             # rendered EXIF text (exif.render_text)
    tags: dict[str, str]  # tag name -> metadata-extractor description (default tag set only)
    width: int
    height: int
    camera: str           # "Make|Model", the key for camera-held-out splits
    path: str             # source path (or YFCC photo id) as given to build-data
    sha256: str           # of `image`


_FIELDS = ("image", "text", "tags", "width", "height", "camera", "path", "sha256")


def encode_record(rec: Record) -> bytes:
    """Serialize a record to bytes for an ArrayRecord shard."""
    missing = [k for k in _FIELDS if k not in rec]
    if missing:
        raise ValueError(f"record is missing fields {missing}")
    payload: dict[str, Any] = {k: rec[k] for k in _FIELDS}
    payload["v"] = RECORD_VERSION
    return msgpack.packb(payload, use_bin_type=True)


def decode_record(data: bytes) -> Record:
    """Inverse of encode_record."""
    payload = msgpack.unpackb(data, raw=False)
    if payload.pop("v", None) != RECORD_VERSION:
        raise ValueError("not an exif-jax record (unknown version)")
    return payload  # type: ignore[return-value]
