"""One photo's bytes -> its record: decode-check the image, read or take its EXIF tags, render the text.

build.py calls make_record for every input file (in worker processes); a photo that is not a usable
camera JPEG comes back as a skip reason, which build-data counts in summary.json.
"""
from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from struct import error as struct_error

from PIL import Image, UnidentifiedImageError

from exif_jax import exif
from exif_jax.data.records import Record


@dataclass(frozen=True)
class Settings:
    """What a record depends on besides the file: part of each shard's digest."""
    tag_order: tuple[str, ...]
    max_value_len: int = 40
    style: str = "metadata_extractor"
    min_size: int = 128
    formats: tuple[str, ...] = ("JPEG", "MPO")  # MPO: multi-picture camera JPEGs (Fujifilm, some phones)


_GRAY_MODES = {"1", "L", "LA", "La"}
_HIGH_BIT_MODES = {"I", "F", "I;16", "I;16L", "I;16B", "I;16N", "RGB;16", "RGBA;16"}


def check_image(data: bytes, *, min_size: int = 128, formats: Sequence[str] = ("JPEG", "MPO")
                ) -> tuple[str, int, int]:
    """Decode the image once (pixels are discarded); returns ("", width, height) or (skip reason, 0, 0)."""
    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that; both are bombs here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                fmt, mode, (w, h) = im.format, im.mode, im.size
                if mode == "CMYK":
                    return "cmyk", 0, 0
                if mode in _GRAY_MODES:
                    return "grayscale", 0, 0
                if mode in _HIGH_BIT_MODES or mode.startswith("I;16"):
                    return "high_bit_depth", 0, 0
                if mode != "RGB":
                    return "unsupported_mode", 0, 0
                if min(w, h) < min_size:
                    return "too_small", 0, 0
                if fmt not in formats:
                    return "not_jpeg" if "JPEG" in formats else "unsupported_format", 0, 0
                im.load()  # a truncated or corrupt stream fails here, not when a crop is read
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return "decompression_bomb", 0, 0
    except UnidentifiedImageError:
        return "not_an_image", 0, 0
    except (OSError, SyntaxError, ValueError, IndexError, TypeError, struct_error, EOFError,
            RuntimeError, MemoryError):
        # Pillow raises a zoo of types on corrupt streams; any of them means "cannot be decoded".
        return "corrupt_image", 0, 0
    return "", w, h


def make_record(data: bytes, name: str, settings: Settings, tags: dict[str, str] | None = None,
                sha256: str | None = None) -> tuple[Record | None, str]:
    """Check one file's bytes and build its record; returns (record, "") or (None, skip reason)."""
    reason, width, height = check_image(data, min_size=settings.min_size, formats=settings.formats)
    if reason:
        return None, reason
    if tags is None:
        try:
            tags = exif.read_tags(data, name=name)
        except exif.ExifError:
            return None, "bad_exif"
    if not tags:
        return None, "no_exif"
    if len(exif.select_tags(tags, ("Make", "Model"), 256)) < 2:
        return None, "no_camera"  # camera-held-out splits need both Make and Model (after cleaning)
    order = settings.tag_order
    rec: Record = {
        "image": data,
        "text": exif.render_text(tags, tag_order=order, max_value_len=settings.max_value_len,
                                 style=settings.style),
        "tags": exif.select_tags(tags, tag_order=order, max_value_len=settings.max_value_len),
        "width": width, "height": height,
        "camera": exif.camera_key(tags),
        "path": name,
        "sha256": sha256 or hashlib.sha256(data).hexdigest(),
    }
    return rec, ""
