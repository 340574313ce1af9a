"""EXIF -> text: a photo's IFD0 / Exif SubIFD tags described as metadata-extractor does, then rendered.

The paper trained on the YFCC100M EXIF dump, whose values are metadata-extractor's (Java) descriptions
(`Exposure Time = 1/250 sec`, `F-Number = f/9.0`), so text from a photo file and text from a YFCC line are
the same string. Pillow opens the file and hands over the raw EXIF block; exif_tiff.py walks its IFDs and
exif_describe.py applies metadata-extractor's description rules. This module is the public API: the tag
set, reading a file, selecting and rendering tags, YFCC lines, and the `exif-jax exif` CLI.
"""
from __future__ import annotations

import argparse
import io
import json
import mmap
import os
import re
import struct
import unicodedata
import urllib.parse
import warnings
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from PIL import Image

from exif_jax.exif_describe import describe_directories
from exif_jax.exif_tiff import EXIF_DIRECTORIES, parse_tiff

# The default tag set, in text order (metadata-extractor names). Chosen from what the shared photos'
# reference dumps carry and from the paper (hellomuffin/exif-as-language keeps the YFCC tags present in
# >= 49% of photos, dataProcess/yfcc_dataInfo.py). Why the starting list changed:
# - Compression dropped: in camera JPEGs it lives in IFD1 (the thumbnail), never IFD0 (128 of 143 shared
#   photos have it, all under "Exif Thumbnail"); it describes the thumbnail, not the photo.
# - Software dropped: free text, near-unique per firmware ("v88-74", "Ver.1.00u", "R1CA008 prg1223-...")
#   so it duplicates Model, and on the web it names editors (Photoshop, Picasa), i.e. it describes what
#   happened to the file, not the camera. The shared photos were even selected for not naming an editor.
# - Compressed Bits Per Pixel added (86/143): the camera's JPEG quality setting, visible in every crop.
# - Gain Control, Contrast, Saturation, Sharpness added (26-34/143): in-camera processing that changes
#   pixels (noise, tone, edges), which is what the image tower can learn from.
# - Never: pixel dimensions (Exif Image Width/Height leak crop size), Orientation (how the camera was
#   held), dates, GPS, serial numbers, owner/artist names, comments, maker notes (see _PRIVATE below).
# - Left out as uninformative: File Source / Scene Type (constant for cameras), White Balance (light
#   source: "Unknown" on 62 of 69 photos, and its wording changed between metadata-extractor releases).
DEFAULT_TAGS: tuple[str, ...] = (
    "Make", "Model", "Exposure Time", "F-Number", "Exposure Program", "ISO Speed Ratings",
    "Shutter Speed Value", "Aperture Value", "Exposure Bias Value", "Max Aperture Value",
    "Metering Mode", "Flash", "Focal Length", "Color Space", "Components Configuration",
    "Compressed Bits Per Pixel", "Exposure Mode", "White Balance Mode", "Digital Zoom Ratio",
    "Focal Length 35", "Scene Capture Type", "Gain Control", "Contrast", "Saturation", "Sharpness",
    "Sensing Method", "Custom Rendered", "X Resolution", "Y Resolution", "Resolution Unit",
    "YCbCr Positioning", "Exif Version", "FlashPix Version",
)

# Tag names whose values never go into text, whatever tag order is asked for: time, place, identity,
# free text, maker notes.
_PRIVATE = re.compile(
    r"date|sub-sec|time zone|offset time|gps|serial|owner|maker ?note|artist|copyright|comment|"
    r"description|windows xp|unique image id|host computer|document name", re.IGNORECASE)


class ExifError(Exception):
    """A file that cannot be read as an image; the message names the file and the reason."""


# ----------------------------------------------------------------------------------------------------
# Reading files

def _png_exif_after_idat(fp: Any) -> bytes | None:
    """An eXIf chunk placed after the image data, found by walking chunk headers (no decoding)."""
    fp.seek(8)
    for _ in range(100_000):
        head = fp.read(8)
        if len(head) < 8:
            return None
        length, kind = struct.unpack(">I4s", head)
        if kind == b"eXIf":
            return fp.read(min(length, 1 << 24))
        if kind == b"IEND":
            return None
        fp.seek(length + 4, 1)
    return None


def _exif_block(im: Image.Image, source: Any) -> Any:
    if im.format == "TIFF":
        return source  # bytes given: they are the TIFF structure EXIF uses
    raw = im.info.get("exif")
    if raw is None and im.format == "PNG":
        # Pillow sees a trailing eXIf only after decoding every pixel; walk the chunks instead.
        with (io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else open(source, "rb")) as fp:
            raw = _png_exif_after_idat(fp)
    if not isinstance(raw, (bytes, bytearray)):
        return b""
    return raw[6:] if raw[:6] == b"Exif\0\0" else raw


def read_tags(source: str | os.PathLike | bytes, *, name: str | None = None) -> dict[str, str]:
    """A photo's EXIF tags described as metadata-extractor does ({} when it has none), in the file's order:
    IFD0, then the Exif SubIFD, then Interop, each as the file stores its entries (metadata-extractor's)."""
    in_memory = isinstance(source, (bytes, bytearray))
    label = name or ("<bytes>" if in_memory else os.fspath(source))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(source) if in_memory else source) as im:
                if im.format == "TIFF" and not in_memory:
                    # The file is itself the TIFF structure: map it rather than read it whole.
                    with open(source, "rb") as f, \
                            mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                        return describe_directories(parse_tiff(mm))
                return describe_directories(parse_tiff(_exif_block(im, source)))
    except Image.DecompressionBombError as e:
        raise ExifError(f"{label}: refused, too many pixels (decompression bomb limit): {e}") from e
    except Image.UnidentifiedImageError as e:
        raise ExifError(f"{label}: not an image Pillow can identify") from e
    except (OSError, MemoryError) as e:
        raise ExifError(f"{label}: cannot read: {e}") from e
    except Exception as e:  # a fuzzed file can trip any reader; report it against the file
        raise ExifError(f"{label}: malformed file ({type(e).__name__}: {e})") from e


# ----------------------------------------------------------------------------------------------------
# Tags -> text

def _clean(value: str, limit: int) -> str:
    """Drop control/format characters, collapse whitespace, keep at most `limit` characters."""
    out: list[str] = []
    space = False
    for ch in value:
        if ch.isspace():
            space = bool(out)
            continue
        if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co"):
            continue
        if space:
            out.append(" ")
            space = False
        out.append(ch)
        if len(out) >= limit:
            break
    return "".join(out[:limit]).rstrip()


def select_tags(tags: Mapping[str, str], tag_order: Sequence[str] | None = DEFAULT_TAGS,
                max_value_len: int = 40) -> dict[str, str]:
    """The tags that go into text, in order, cleaned and bounded; tag_order=None keeps every tag."""
    if max_value_len < 1:
        raise ValueError(f"max_value_len must be >= 1, got {max_value_len}")
    names = list(tags) if tag_order is None else list(tag_order)
    out: dict[str, str] = {}
    for name in names:
        value = tags.get(name)
        key = _clean(str(name), 64)
        if not isinstance(value, str) or _PRIVATE.search(str(name)) or _PRIVATE.search(key):
            continue
        value = _clean(value, max_value_len)
        if key and value and key not in out:
            out[key] = value
    return out


def official_value(name: str, value: str) -> str:
    """A value as the paper's code refines it (hellomuffin/exif-as-language dataProcess/yfcc_dataInfo.py)."""
    # Its rules, in its order (the first that applies; any exception makes the value "Unknown"):
    #   "... Resolution", Exposure Bias Value: the first word a/b -> a // b (Python floor division; kept
    #       as is when it is not two integers), the rest kept: "72 dots per inch", "-1/3 EV" -> "-1 EV"
    #   Focal Length: the first word as "%.1f": "5.4 mm"; ISO Speed Ratings: the first word: "100"
    #   anything else: over 20 characters -> "Unknown", else every character outside [a-zA-Z0-9.,/-]
    #       dropped, spaces included: "Canon EOS 20D" -> "CanonEOS20D", "1/250 sec" -> "1/250sec"
    try:
        if name.endswith("Resolution") or name == "Exposure Bias Value":
            words = value.split()
            parts = words[0].split("/")
            try:
                if len(parts) > 1:
                    words[0] = str(int(parts[0]) // int(parts[1]))
            except Exception:
                words[0] = parts[0]
            return " ".join(words)
        if name == "Focal Length":
            words = value.split()
            words[0] = "{:.1f}".format(float(words[0]))
            return " ".join(words)
        if name == "ISO Speed Ratings":
            return value.split()[0]
        if len(value) > 20:
            return "Unknown"
        return re.sub(r"[^a-zA-Z0-9.,/-]", "", value)
    except Exception:
        return "Unknown"


# Text styles; both join `Tag: value` pairs with ", ".
#   metadata_extractor  the description as metadata-extractor writes it (spaces, units, long values kept),
#                       tags in the config's order (tag_order), the same for every photo
#   official            the paper code's refine_value (official_value above); what its DistilBERT read. Tags
#                       in the photo's own order: data.py joins the tags of a photo's EXIF JSON, written in
#                       the order its YFCC line (metadata-extractor's dump) lists them, i.e. IFD0 then the
#                       Exif SubIFD, each in the order the file stores its entries (not always by tag id:
#                       some Canon PowerShots keep SubIFD tags in IFD0). tag_order is then the tag set.
#                       One difference: a value refined to "" is dropped here, where the paper's text
#                       keeps "Tag: " (select_tags drops empty values for every style).
STYLES: dict[str, Callable[[str, str], str]] = {
    "metadata_extractor": lambda name, value: value,
    "official": official_value,
}
PHOTO_ORDER_STYLES = frozenset({"official"})


def render_text(tags: Mapping[str, str], tag_order: Sequence[str] | None = DEFAULT_TAGS,
                max_value_len: int = 40, style: str = "metadata_extractor") -> str:
    """`Make: Canon, Model: Canon EOS 20D, Exposure Time: 1/250 sec, ...` (tag order: see STYLES)."""
    if style not in STYLES:
        raise ValueError(f"unknown text style {style!r}; known: {sorted(STYLES)}")
    if style in PHOTO_ORDER_STYLES and tag_order is not None:
        wanted = set(tag_order)
        tag_order = [k for k in tags if k in wanted]  # `tags` keeps the file's order (read_tags, YFCC lines)
    refine = STYLES[style]
    styled = {k: refine(k, v) for k, v in tags.items() if isinstance(v, str)}
    return ", ".join(f"{k}: {v}" for k, v in select_tags(styled, tag_order, max_value_len).items())


def camera_key(tags: Mapping[str, str]) -> str:
    """"Make|Model" with whitespace normalized; "" when both are absent."""
    make, model = (_clean(tags.get(k) or "", 256) for k in ("Make", "Model"))
    return f"{make}|{model}" if make or model else ""


# ----------------------------------------------------------------------------------------------------
# metadata-extractor dumps and YFCC100M lines

_ME_LINE = re.compile(r"^\[(?P<dir>[^\]]+?) - 0x[0-9a-fA-F]+\] (?P<name>.+?) = (?P<value>.*)$")


def metadata_extractor_entries(path: str | os.PathLike) -> list[tuple[str, str, str]]:
    """Every (directory, tag name, description) line of a metadata-extractor text dump."""
    with open(path, "rb") as f:
        text = f.read().decode("utf-8", "replace")
    out = []
    for line in text.split("\n"):  # not splitlines(): values may hold \x0b, \x1c, U+2028 ...
        m = _ME_LINE.match(line.removesuffix("\r"))
        if m:
            out.append((m["dir"], m["name"], m["value"]))
    return out


def _exif_dict(entries: Iterable[tuple[str, str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for directory, name, value in entries:
        if directory in EXIF_DIRECTORIES and name not in out:
            out[name] = value
    return out


def parse_metadata_extractor_txt(path: str | os.PathLike) -> dict[str, str]:
    """A reference dump -> {tag name: description} from IFD0 / SubIFD / Interop; first wins."""
    return _exif_dict(metadata_extractor_entries(path))


def parse_yfcc_line(line: str) -> tuple[str, dict[str, str]]:
    """`photo_id<TAB>Exif+SubIFD.Exposure+Time:1%2F250+sec,...` -> (photo_id, tags as read_tags)."""
    # Category, tag and value are each URL-encoded once (YFCC100M readme: "Exif+SubIFD.Focal+Length:
    # 50.0+mm"), so one unquote_plus each. The paper's code decodes twice, which only differs for a
    # value that still holds "%XX" after the first decode.
    photo_id, _, rest = line.rstrip("\r\n").partition("\t")
    entries = []
    for item in rest.split(","):
        key, sep, value = item.partition(":")
        directory, dot, name = key.partition(".")
        if sep and dot:
            entries.append((urllib.parse.unquote_plus(directory), urllib.parse.unquote_plus(name),
                            urllib.parse.unquote_plus(value)))
    return photo_id.strip(), _exif_dict(entries)


def to_yfcc_line(photo_id: str | int,
                 dir_tags: Mapping[str, Mapping[str, str]] | Iterable[tuple[str, str, str]]) -> str:
    """The YFCC100M EXIF line for (directory, tag, description) entries or {directory: {tag: desc}}."""
    if isinstance(dir_tags, Mapping):
        dir_tags = [(d, k, v) for d, tags in dir_tags.items() for k, v in tags.items()]
    q = urllib.parse.quote_plus
    return f"{photo_id}\t" + ",".join(f"{q(d)}.{q(k)}:{q(v)}" for d, k, v in dir_tags)


# ----------------------------------------------------------------------------------------------------
# CLI: exif-jax exif FILE... [--tags-all] [--max-value-len N]

def describe_files(paths: Iterable[str], tag_order: Sequence[str] | None = DEFAULT_TAGS,
                   max_value_len: int = 40, style: str = "metadata_extractor") -> Iterator[dict]:
    """One result per file: {"file", "text", "tags"} or {"file", "error"}; never stops early."""
    for path in paths:
        try:
            tags = read_tags(path)
        except ExifError as e:
            yield {"file": path, "error": str(e)}
            continue
        yield {"file": path, "text": render_text(tags, tag_order, max_value_len, style),
               "tags": select_tags(tags, tag_order, max_value_len)}


def add_args(parser: argparse.ArgumentParser) -> None:
    """Flags of `exif-jax exif`."""
    parser.add_argument("files", nargs="+", help="photos (JPEG, TIFF, PNG, WebP)")
    parser.add_argument("--tags-all", action="store_true",
                        help="every tag read (dates, GPS, serials, names still left out)")
    parser.add_argument("--max-value-len", type=int, default=40, metavar="N", help="characters kept per value")
    parser.add_argument("--style", default="metadata_extractor", choices=sorted(STYLES),
                        help="value text: metadata_extractor's descriptions, or official (the paper code's "
                             "refinements and tag order)")


def cli_main(args: argparse.Namespace) -> int:
    """Print one JSON line per file; exit 1 if any file could not be read."""
    rc = 0
    for result in describe_files(args.files, None if args.tags_all else DEFAULT_TAGS,
                                 args.max_value_len, args.style):
        rc |= "error" in result
        print(json.dumps(result, ensure_ascii=False), flush=True)
    return rc
