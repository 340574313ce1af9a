"""One photo's bytes -> its record: decode-check the image, read or take its EXIF tags, render the text,
and rewrite the JPEG for random-access crops.

build.py calls make_record for every input file (in worker processes); a photo that is not a usable
camera JPEG comes back as a skip reason, which build-data counts in summary.json. A usable photo that the
restart rewrite cannot take (progressive, arithmetic-coded, odd sampling, ...) is kept and decoded whole
at load time; its reason is counted too. A rewrite is kept only if a full decode of it equals a full
decode of the original, pixel for pixel: the fast path can be slower, never different.
"""
from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from struct import error as struct_error

import numpy as np
from PIL import Image, UnidentifiedImageError

from exif_jax import exif
from exif_jax.data import jpeg_restart
from exif_jax.data.jpeg_parse import NotFastPath
from exif_jax.data.records import Record


@dataclass(frozen=True)
class Settings:
    """What a record depends on besides the file: part of each shard's digest."""
    tag_order: tuple[str, ...]
    max_value_len: int = 40
    style: str = "metadata_extractor"
    min_size: int = 128
    formats: tuple[str, ...] = ("JPEG", "MPO")  # MPO: multi-picture camera JPEGs (Fujifilm, some phones)
    fast_path: bool = True       # rewrite JPEGs for random-access crops (False: store the original only)
    keep_original: bool = False  # also store the original file next to the rewrite


_GRAY_MODES = {"1", "L", "LA", "La"}
_HIGH_BIT_MODES = {"I", "F", "I;16", "I;16L", "I;16B", "I;16N", "RGB;16", "RGBA;16"}


def check_image(data: bytes, *, min_size: int = 128, formats: Sequence[str] = ("JPEG", "MPO"),
                keep_pixels: bool = False) -> tuple[str, int, int, np.ndarray | None]:
    """Decode the image once; returns ("", width, height, pixels) or (skip reason, 0, 0, None).

    pixels is the decoded uint8 [H, W, 3] array when keep_pixels, else None.
    """
    pixels = None
    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that; both are bombs here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                fmt, mode, (w, h) = im.format, im.mode, im.size
                if mode == "CMYK":
                    return "cmyk", 0, 0, None
                if mode in _GRAY_MODES:
                    return "grayscale", 0, 0, None
                if mode in _HIGH_BIT_MODES or mode.startswith("I;16"):
                    return "high_bit_depth", 0, 0, None
                if mode != "RGB":
                    return "unsupported_mode", 0, 0, None
                if min(w, h) < min_size:
                    return "too_small", 0, 0, None
                if fmt not in formats:
                    return "not_jpeg" if "JPEG" in formats else "unsupported_format", 0, 0, None
                im.load()  # a truncated or corrupt stream fails here, not when a crop is read
                if keep_pixels:
                    pixels = np.asarray(im)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return "decompression_bomb", 0, 0, None
    except UnidentifiedImageError:
        return "not_an_image", 0, 0, None
    except (OSError, SyntaxError, ValueError, IndexError, TypeError, struct_error, EOFError,
            RuntimeError, MemoryError):
        # Pillow raises a zoo of types on corrupt streams; any of them means "cannot be decoded".
        return "corrupt_image", 0, 0, None
    return "", w, h, pixels


def fast_stream(data: bytes, pixels: np.ndarray) -> tuple[jpeg_restart.Rewritten | None, str]:
    """The restart-per-MCU rewrite of `data` if it decodes to exactly `pixels`; else (None, reason)."""
    try:
        rw = jpeg_restart.rewrite(data)
        rw.tables()  # refuses an MCU the pixel layout cannot describe (64 KiB or more)
    except NotFastPath as e:
        return None, e.reason
    try:
        with Image.open(io.BytesIO(rw.data)) as im:
            same = im.mode == "RGB" and im.size == (pixels.shape[1], pixels.shape[0]) and np.array_equal(
                np.asarray(im), pixels)
    except Exception:  # noqa: BLE001 - a rewrite Pillow cannot read is a rewrite we do not keep
        same = False
    return (rw, "") if same else (None, "verify_mismatch")


def make_record(data: bytes, name: str, settings: Settings, tags: dict[str, str] | None = None,
                sha256: str | None = None) -> tuple[Record | None, str, jpeg_restart.Rewritten | None]:
    """Check one file's bytes and build its record; returns (record, "", rewrite or None) or
    (None, skip reason, None).

    The record's pixel fields (`jpeg`, `fast`, `original`) are left for the caller, which knows where
    the bytes go; `fast_reason` is "" when the rewrite is returned, else why there is none.
    """
    reason, width, height, pixels = check_image(data, min_size=settings.min_size, formats=settings.formats,
                                                keep_pixels=settings.fast_path)
    if reason:
        return None, reason, None
    if tags is None:
        try:
            tags = exif.read_tags(data, name=name)
        except exif.ExifError:
            return None, "bad_exif", None
    if not tags:
        return None, "no_exif", None
    if len(exif.select_tags(tags, ("Make", "Model"), 256)) < 2:
        return None, "no_camera", None  # camera-held-out splits need both Make and Model (after cleaning)
    rewrite, why = fast_stream(data, pixels) if settings.fast_path else (None, "fast_path_off")
    del pixels
    order = settings.tag_order
    rec: Record = {
        "text": exif.render_text(tags, tag_order=order, max_value_len=settings.max_value_len,
                                 style=settings.style),
        "tags": exif.select_tags(tags, tag_order=order, max_value_len=settings.max_value_len),
        "width": width, "height": height,
        "camera": exif.camera_key(tags),
        "path": name,
        "sha256": sha256 or hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "jpeg": None, "fast": None, "fast_reason": why, "original": None,  # type: ignore[typeddict-item]
    }
    return rec, "", rewrite
